"""What a coordinator makes of the fleet's raw Redis data: a job's hash as the
JobInfo a daemon would answer, which hosts can take a job, and the fleet's
status and languages.  Pure functions (split from coordinator.py, which keeps
the operations: admission, waits, cancels)."""

from __future__ import annotations

import time
from typing import Any, Literal

import msgspec

from sandboxd.errors import error, make
from sandboxd.fleet.keys import BY_HASH
from sandboxd.fleet.store import FleetStore
from sandboxd.jobs import timeseries
from sandboxd.jobs.files import refs_of
from sandboxd.schema import JobInfo

FINAL = ("done", "failed", "cancelled")


def unix(ms: bytes | None) -> float | None:
    return None if ms is None else int(ms) / 1000


def job_info(job_id: str, d: dict[str, bytes]) -> JobInfo:
    state = d["state"].decode()
    kind: Literal["run", "submission"] = "run" if d["kind"] == b"run" else "submission"
    host = d["host"].decode() if d.get("host") else None
    info = JobInfo(job_id, kind, "running" if state == "running" else "queued", host=host)
    if state in FINAL:
        if d.get("info") is None:
            info = JobInfo(job_id, kind, "failed", error=make("internal", "final job without a result"))
        else:
            try:
                info = FleetStore.decode_info(d["info"])
            except (msgspec.DecodeError, msgspec.ValidationError) as e:
                err = make("internal", f"unreadable result in Redis: {e}")
                info = JobInfo(job_id, kind, "failed", error=err)
        info.job = job_id
    # The fleet's times (Redis's clock), not the host's own job's.
    info.created_at = unix(d.get("enq"))
    info.finished_at = unix(d.get("finished")) if state in FINAL else None
    return info


def hash_field(spec: object) -> str:
    """The first field of a native job naming a file by hash; "" if none."""
    refs = refs_of(spec)
    return refs[0][0] if refs else ""


def check_servable(hosts: list[dict[str, Any]], lang: str, tag: str | None, by_hash: str = "") -> None:
    """Refuse a job no live host could take (lang "": a run, any host; by_hash:
    the field naming a file by hash, which only a host advertising BY_HASH decodes)."""
    if not hosts:
        raise error("draining", "no host has joined the fleet; retry later")
    ok_lang = [h for h in hosts if not lang or any(x.get("id") == lang for x in h.get("languages", []))]
    if not ok_lang:
        served = sorted({x.get("id") for h in hosts for x in h.get("languages", [])})
        raise error("bad_request", f"lang: no host serves {lang!r} (served: {', '.join(served)})")
    if tag is None:
        if all(h.get("only_tagged") for h in ok_lang):
            raise error("bad_request", "host_tag: every host serving this job is reserved; name its tag")
    elif not any(tag in h.get("tags", []) for h in ok_lang):
        raise error("bad_request", f"host_tag: no live host carries tag {tag!r}" + (f" for {lang!r}" if lang else ""))
    if by_hash and not any(h.get(BY_HASH) for h in ok_lang if tag is None or tag in h.get("tags", [])):
        why = "no live host serving this job takes files by hash (older hosts: a rolling upgrade?)"
        raise error("bad_request", f"{by_hash}: {why}; send the bytes inline, or retry once the hosts are upgraded")


def status(
    hosts: list[dict[str, Any]], queues: dict[str, int], stats: dict[str, int], draining: bool
) -> dict[str, Any]:
    return {
        "fleet": {
            "hosts": len(hosts),
            "drained": sum(1 for h in hosts if h["drained"]),
            "boxes": sum(int(h.get("capacity", 0)) for h in hosts),
            "busy": sum(int(h.get("load", 0)) for h in hosts),
        },
        "queues": {q: n for q, n in queues.items() if n},
        "jobs": stats,
        "draining": draining,
    }


def dashboard(
    hosts: list[dict[str, Any]],
    queues: dict[str, int],
    priorities: dict[str, dict[int, int]],
    stats: dict[str, int],
    draining: bool,
) -> dict[str, Any]:
    """The coordinator's dashboard: its status, every host with its load and run
    times, the fleet's queues (each "language|tag": its depth, and its waiting
    jobs per priority as FleetStore.queue_priorities counts them), and the
    hosts' series merged (sandboxd.jobs.timeseries.merge)."""
    rows = [
        {
            "id": h["id"],
            "drained": h["drained"],
            "capacity": int(h.get("capacity", 0)),
            "load": int(h.get("load", 0)),
            "running": int(h.get("running", 0)),
            "pools": h.get("pools", {}),
            "heartbeat_age": h.get("heartbeat_age"),
            "runs_last_min": sum(int(b[1]) for b in _last(h.get("series"), 60)),
        }
        for h in hosts
    ]
    series = [s for h in hosts if isinstance(s := h.get("series"), list)]
    return {
        **status(hosts, queues, stats, draining),
        "hosts": rows,
        "fleet_queues": {q: {"depth": n, "priorities": priorities.get(q, {})} for q, n in queues.items() if n},
        "now": time.time(),
        "series": timeseries.merge(series),
    }


def _last(series: Any, seconds: int) -> list[Any]:
    if not isinstance(series, list):
        return []
    since = time.time() - seconds
    return [b for b in series if isinstance(b, list) and len(b) == 4 and b[0] > since]


def languages(hosts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each language some host serves, with how many hosts serve it."""
    langs: dict[str, dict[str, Any]] = {}
    for h in hosts:
        for lang in h.get("languages", []):
            entry = langs.setdefault(lang["id"], {**lang, "hosts": 0})
            entry["hosts"] += 1
    return [langs[k] for k in sorted(langs)]
