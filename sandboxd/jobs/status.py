"""A Service's state as operators see it: /v1/status, /v1/languages, /metrics, Judge0's load."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sandboxd.jobs.backend import Load

if TYPE_CHECKING:
    from sandboxd.jobs.service import Service


def status(svc: Service) -> dict[str, Any]:
    eng = svc.engine
    pools = {}
    for name, pool in eng.pools.items():
        q = eng.queues[name]
        st = pool.stats
        pools[name] = {
            "warm": st.warm,
            "busy": st.busy,
            "building": st.building,
            "recycled": st.recycled,
            "agent_crashes": st.agent_crashes,
            "capacity": q.capacity,
            "running": q.running,
            "queued": q.queued_by_priority(),
            "rejected": q.rejected,
        }
    languages = {
        lid: {"pool": lang.rootfs, **({"queued": q.queued_by_priority(), "running": q.running} if q else {})}
        for lid, lang in eng.languages.items()
        for q in [eng.lang_queues.get(lid)]
    }
    recent = sorted(svc.recent)
    jobs = {state: n for state, n in svc.table.counts().items() if n}
    return {
        "pools": pools,
        "languages": languages,
        "jobs": jobs,
        "draining": svc.draining,
        "health": {"problem": eng.health.problem, "heals": eng.health.heals},
        "memory_budget": eng.budget.snapshot(),
        "job_store": svc.store.usage.snapshot(),
        "recent_wall_time": {
            "count": len(recent),
            "p50": recent[len(recent) // 2] if recent else None,
            "p99": recent[min(len(recent) - 1, int(len(recent) * 0.99))] if recent else None,
        },
    }


def languages(svc: Service) -> list[dict[str, Any]]:
    return [
        {
            "id": lang.id,
            "name": lang.name,
            "version": svc.engine.versions.get(lang.id),
            "compiled": bool(lang.compile),
            "source": lang.source,
        }
        for lang in sorted(svc.engine.languages.values(), key=lambda x: x.id)
    ]


def refresh_metrics(svc: Service) -> None:
    m = svc.metrics
    m.queue_depth.clear()
    for name, pool in svc.engine.pools.items():
        st = pool.stats
        m.boxes.labels(name, "warm").set(st.warm)
        m.boxes.labels(name, "busy").set(st.busy)
        m.boxes.labels(name, "building").set(st.building)
        m.recycled.labels(name).set(st.recycled)
        m.agent_crashes.labels(name).set(st.agent_crashes)
        for prio, n in svc.engine.queues[name].queued_by_priority().items():
            m.queue_depth.labels(name, str(prio)).set(n)
    for state, n in svc.table.counts().items():
        m.jobs.labels(state).set(n)
    eng = svc.engine
    m.set_budget(eng.budget.limit, eng.budget.used)
    m.set_store(svc.store.usage.snapshot(), svc.store.keys.snapshot())
    for result, n in eng.compile_counts.items():
        m.compiles.labels(result).set(n)
    if svc.files is not None:
        m.files.set(svc.files.store.lru.total)
    m.healthy.set(0 if eng.health.check() else 1)
    m.heals.inc(eng.health.heals - svc._heals_counted)
    svc._heals_counted = eng.health.heals


def compat_load(svc: Service) -> Load:
    st = svc.status()
    workers = [
        {
            "queue": name,
            "size": sum(p["queued"].values()),
            "available": p["capacity"],
            "idle": p["warm"],
            "working": p["busy"],
            "paused": 0,
            "failed": p["agent_crashes"],
        }
        for name, p in st["pools"].items()
    ]
    return Load(svc.compat_pending, svc.engine.cfg.queue_depth, workers)
