"""The operations every transport offers: run, submit, get, cancel, status, languages.

Jobs get an id, live in memory until `results_ttl` after they finish, and can
be waited for, polled or cancelled from any connection or transport.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Literal

from . import callbacks
from .compat import Compiler, Load, Served
from .compat import jobs as compat_jobs
from .engine import Engine
from .errors import error
from .judge import judge
from .metrics import Metrics
from .scheduler import QueueDeadline, QueueFull
from .schema import (
    Error,
    JobInfo,
    RunRequest,
    RunResult,
    SchemaError,
    Submission,
    SubmissionResult,
    TestResult,
    Verdict,
    validate_run,
    validate_submission,
)

log = logging.getLogger(__name__)


@dataclass(eq=False)
class Job:
    id: str
    kind: Literal["run", "submission"]
    lang: str = ""
    state: Literal["queued", "running", "done", "cancelled", "failed"] = "queued"
    result: RunResult | SubmissionResult | None = None
    error: Error | None = None
    created: float = field(default_factory=time.monotonic)
    finished: float = 0.0
    task: asyncio.Task[None] | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)
    listeners: list[Callable[[TestResult], None]] = field(default_factory=list)
    callback_url: str | None = None
    created_at: float = field(default_factory=time.time)
    finished_at: float | None = None
    spec: compat_jobs.Spec | None = None  # a Judge0/Piston job's request
    notify: bool = True  # deliver a compat job's callback here (not when a fleet host runs it)

    def info(self) -> JobInfo:
        return JobInfo(
            self.id,
            self.kind,
            self.state,
            self.result,
            self.error,
            created_at=self.created_at,
            finished_at=self.finished_at,
        )


class Service:
    def __init__(
        self,
        engine: Engine,
        metrics: Metrics | None = None,
        results_ttl: float = 600.0,
        callback_allow_private: bool = False,
    ) -> None:
        self.engine = engine
        self.callback_allow_private = callback_allow_private
        self._callbacks: set[asyncio.Task[Any]] = set()
        self.compiler = Compiler(engine)  # single flight for the compat APIs' compiles
        self.compat_pending = 0  # compat jobs not finished: Judge0's queue count
        self.metrics = metrics or Metrics()
        self.results_ttl = results_ttl
        self.jobs: dict[str, Job] = {}
        self._expiry: deque[Job] = deque()
        self.draining = False
        self.recent: deque[float] = deque(maxlen=200)  # recent run wall times, for status

    # --- job life cycle ---------------------------------------------------

    def _new_job(self, kind: Literal["run", "submission"], lang: str = "", job_id: str | None = None) -> Job:
        if self.draining:
            self.metrics.rejections.labels("draining").inc()
            raise error("draining", "the daemon is shutting down; retry on another host", 1.0)
        self._expire()
        if job_id is not None and job_id in self.jobs:
            raise error("bad_request", f"job id {job_id!r} is in use")
        job = Job(job_id or secrets.token_urlsafe(12), kind, lang)
        self.jobs[job.id] = job
        return job

    def _expire(self) -> None:
        now = time.monotonic()
        while self._expiry and now - self._expiry[0].finished > self.results_ttl:
            self.jobs.pop(self._expiry.popleft().id, None)

    def _finish(self, job: Job) -> None:
        job.finished, job.finished_at = time.monotonic(), time.time()
        self._expiry.append(job)
        job.done.set()
        if job.callback_url:
            self._background(callbacks.deliver(job.callback_url, job.info(), self.callback_allow_private))
        if job.spec is not None:
            self.compat_pending -= 1
            if job.notify:
                self._background(compat_jobs.finished(job.id, job.spec, job.info(), self.callback_allow_private))

    def _background(self, coro: Coroutine[Any, Any, Any]) -> None:
        t = asyncio.ensure_future(coro)
        self._callbacks.add(t)
        t.add_done_callback(self._callbacks.discard)

    async def check_callback(self, url: str) -> None:
        await callbacks.check(url, self.callback_allow_private)

    def submit_compat(self, spec: compat_jobs.Spec, job_id: str | None = None, notify: bool = True) -> Job:
        """A Judge0/Piston job (sandboxd.compat): a native job of kind "submission"
        (ids, draining refusal, state, errors, cancellation, expiry, metrics as
        for every job) whose work is the API's own translation onto the engine.
        notify=False: the caller delivers what follows the result (a fleet host,
        once Redis has taken it)."""
        if spec.lang not in self.engine.languages:
            raise error("bad_request", f"lang: {spec.lang!r} is not served here")
        job = self._new_job("submission", spec.lang, job_id)
        job.spec, job.notify = spec, notify
        self.compat_pending += 1

        def on_run(verdict: Verdict, r: RunResult) -> None:
            self.metrics.verdicts.labels("test", verdict).inc()
            self.recent.append(r.wall_time)

        async def work() -> SubmissionResult:
            job.state = "running"
            res = await compat_jobs.execute(self.engine, self.compiler, spec, on_run)
            self.metrics.verdicts.labels("submission", res.verdict).inc()
            self.metrics.submission_seconds.labels(spec.lang).observe(time.monotonic() - job.created)
            return res

        job.task = asyncio.ensure_future(self._guard(job, work()))
        return job

    def submit_run(self, req: RunRequest, callback_url: str | None = None) -> Job:
        validate_run(req)
        job = self._new_job("run")
        job.callback_url = callback_url
        job.task = asyncio.ensure_future(self._do_run(job, req))
        return job

    def submit(
        self, sub: Submission, progress: Callable[[TestResult], None] | None = None, callback_url: str | None = None
    ) -> Job:
        validate_submission(sub)
        self.engine.language(sub.lang)
        job = self._new_job("submission", sub.lang)
        job.callback_url = callback_url
        if progress is not None:
            job.listeners.append(progress)
        job.task = asyncio.ensure_future(self._do_submission(job, sub))
        return job

    async def _guard(self, job: Job, work: Any) -> None:
        try:
            job.result = await work
            job.state = "done"
        except asyncio.CancelledError:
            job.state = "cancelled"
            job.error = Error("cancelled", "cancelled")
        except QueueFull as e:
            self.metrics.rejections.labels("queue_full").inc()
            job.state, job.error = "failed", Error("queue_full", str(e), e.retry_after)
        except QueueDeadline as e:
            self.metrics.rejections.labels("queue_deadline").inc()
            job.state, job.error = "failed", Error("queue_deadline", str(e))
        except SchemaError as e:
            job.state, job.error = "failed", Error("bad_request", str(e))
        except Exception as e:
            log.exception("job %s failed", job.id)
            job.state, job.error = "failed", Error("internal", f"internal error: {e}")
        finally:
            self._finish(job)

    async def _do_run(self, job: Job, req: RunRequest) -> None:
        async def work() -> RunResult:
            job.state = "running"
            t0 = time.monotonic()
            deadline = None if req.queue_deadline is None else job.created + req.queue_deadline
            res = await self.engine.run(req, priority=req.priority, deadline=deadline)
            self.recent.append(res.wall_time)
            self.metrics.run_seconds.labels(res.status).observe(time.monotonic() - t0)
            return res

        await self._guard(job, work())

    async def _do_submission(self, job: Job, sub: Submission) -> None:
        def progress(t: TestResult) -> None:
            self.metrics.verdicts.labels("test", t.verdict).inc()
            self.recent.append(t.wall_time)
            for cb in job.listeners:
                cb(t)

        async def work() -> SubmissionResult:
            job.state = "running"
            t0 = time.monotonic()
            res = await judge(self.engine, sub, progress)
            self.metrics.verdicts.labels("submission", res.verdict).inc()
            self.metrics.submission_seconds.labels(sub.lang).observe(time.monotonic() - t0)
            return res

        await self._guard(job, work())

    def get(self, job_id: str) -> Job:
        job = self.jobs.get(job_id)
        if job is None:
            raise error("not_found", f"no job {job_id!r} (unknown, or its result expired)")
        return job

    async def wait(self, job: Job, timeout: float | None = None) -> JobInfo:
        if timeout is None:
            await job.done.wait()
        else:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(job.done.wait(), timeout)
        return job.info()

    def cancel(self, job_id: str) -> JobInfo:
        job = self.get(job_id)
        if job.task is not None and not job.task.done():
            job.task.cancel()
        return job.info()

    # --- the transports' view (wire.Frontend) ------------------------------

    async def start_run(
        self, req: RunRequest, callback_url: str | None = None, *, idempotency_key: str | None = None
    ) -> JobInfo:
        if callback_url is not None:
            await self.check_callback(callback_url)
        return self.submit_run(req, callback_url).info()

    async def start_submission(
        self,
        sub: Submission,
        progress: Callable[[TestResult], None] | None = None,
        callback_url: str | None = None,
        *,
        idempotency_key: str | None = None,
    ) -> JobInfo:
        if callback_url is not None:
            await self.check_callback(callback_url)
        return self.submit(sub, progress, callback_url).info()

    async def job_info(self, job_id: str) -> JobInfo:
        return self.get(job_id).info()

    async def wait_job(self, job_id: str, timeout: float | None = None) -> JobInfo:
        return await self.wait(self.get(job_id), timeout)

    # --- the compat APIs' view (sandboxd.compat.Backend) --------------------

    async def start_compat(self, spec: compat_jobs.Spec, job_id: str) -> JobInfo:
        return self.submit_compat(spec, job_id).info()

    async def compat_job(self, job_id: str) -> tuple[compat_jobs.Spec, JobInfo] | None:
        self._expire()
        job = self.jobs.get(job_id)
        if job is None or job.spec is None:
            return None
        return job.spec, job.info()

    async def forget_job(self, job_id: str) -> Literal["ok", "missing", "pending"]:
        job = self.jobs.get(job_id)
        if job is None:
            return "missing"
        if not job.done.is_set():
            return "pending"
        del self.jobs[job_id]
        job.spec = job.result = None  # (its expiry entry stays until due: free what it held now)
        return "ok"

    async def compat_languages(self) -> dict[str, Served]:
        eng = self.engine
        return {lid: Served(lang, eng.versions.get(lid, "")) for lid, lang in eng.languages.items()}

    async def compat_load(self) -> Load:
        st = self.status()
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
        return Load(self.compat_pending, self.engine.cfg.queue_depth, workers)

    async def cancel_job(self, job_id: str) -> JobInfo:
        return self.cancel(job_id)

    async def status_info(self) -> dict[str, Any]:
        return self.status()

    async def language_list(self) -> list[dict[str, Any]]:
        return self.languages()

    async def metrics_text(self) -> bytes:
        self.refresh_metrics()
        return self.metrics.render()

    def ready(self) -> bool:
        return not self.draining and any(p.stats.warm or p.stats.busy for p in self.engine.pools.values())

    # --- state ------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        eng = self.engine
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
        recent = sorted(self.recent)
        jobs: dict[str, int] = {}
        for j in self.jobs.values():
            jobs[j.state] = jobs.get(j.state, 0) + 1
        return {
            "pools": pools,
            "languages": languages,
            "jobs": jobs,
            "draining": self.draining,
            "recent_wall_time": {
                "count": len(recent),
                "p50": recent[len(recent) // 2] if recent else None,
                "p99": recent[min(len(recent) - 1, int(len(recent) * 0.99))] if recent else None,
            },
        }

    def languages(self) -> list[dict[str, Any]]:
        return [
            {
                "id": lang.id,
                "name": lang.name,
                "version": self.engine.versions.get(lang.id),
                "compiled": bool(lang.compile),
                "source": lang.source,
            }
            for lang in sorted(self.engine.languages.values(), key=lambda x: x.id)
        ]

    def refresh_metrics(self) -> None:
        m = self.metrics
        m.queue_depth.clear()
        for name, pool in self.engine.pools.items():
            st = pool.stats
            m.boxes.labels(name, "warm").set(st.warm)
            m.boxes.labels(name, "busy").set(st.busy)
            m.boxes.labels(name, "building").set(st.building)
            m.recycled.labels(name).set(st.recycled)
            m.agent_crashes.labels(name).set(st.agent_crashes)
            for prio, n in self.engine.queues[name].queued_by_priority().items():
                m.queue_depth.labels(name, str(prio)).set(n)
        counts: dict[str, int] = {"queued": 0, "running": 0, "done": 0, "cancelled": 0, "failed": 0}
        for j in self.jobs.values():
            counts[j.state] += 1
        for state, n in counts.items():
            m.jobs.labels(state).set(n)

    async def drain(self, grace: float) -> None:
        """Stop taking jobs; let running ones finish within `grace` seconds, then cancel the rest."""
        self.draining = True
        pending = [j.task for j in self.jobs.values() if j.task is not None and not j.task.done()]
        if pending:
            log.info("draining: waiting up to %.0f s for %d jobs", grace, len(pending))
            _, late = await asyncio.wait(pending, timeout=grace)
            for t in late:
                t.cancel()
            if late:
                log.warning("draining: cancelled %d jobs after the grace period", len(late))
                await asyncio.wait(late, timeout=5)
