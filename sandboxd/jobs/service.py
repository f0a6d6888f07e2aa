"""A host daemon's operations (run, submit, get, cancel, status, languages) over its engine.

Jobs get an id and can be waited for, polled or cancelled from any connection
or transport.  A job accepted through a transport is in the durable store
(sandboxd.jobs.store) before it is acknowledged, runs again if the daemon dies
before it finishes, and its result stays readable from the store until
`results_ttl` after it finished (sandboxd.jobs.table: what stays in memory).
A waited job acknowledged only by its result (sandboxd.jobs.accept) is
written there once, at its end.
An idempotency key names one job: the same key with the same request gets
that job again, with another request a `conflict`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import secrets
import time
from collections.abc import Coroutine
from typing import Any, Literal

from sandboxd.config import JOBS, SessionsSettings
from sandboxd.engine.budget import Admission, ResultHold
from sandboxd.engine.compiler import Compiler
from sandboxd.engine.engine import Engine
from sandboxd.engine.scheduler import QueueDeadline, QueueFull
from sandboxd.errors import bad_request, error, make
from sandboxd.jobs import callbacks
from sandboxd.jobs import status as servicestatus
from sandboxd.jobs.accept import Acceptance
from sandboxd.jobs.backend import Load, Served
from sandboxd.jobs.files import HostFiles, refs_of
from sandboxd.jobs.fingerprint import Op, Spec
from sandboxd.jobs.frontend import Progress
from sandboxd.jobs.kinds import KINDS
from sandboxd.jobs.metrics import Metrics
from sandboxd.jobs.sessions import Sessions
from sandboxd.jobs.store import LATER, JobStore, Stored
from sandboxd.jobs.table import Job, JobTable, decode_spec, kind_of, lost_info
from sandboxd.jobs.timeseries import RunTimes
from sandboxd.schema import (
    JobInfo,
    RunRequest,
    SchemaError,
    Submission,
    validate_run,
    validate_submission,
)

__all__ = ["Job", "Service"]
log = logging.getLogger(__name__)
REQUEUED = "the daemon stopped before the job finished; it runs again when the daemon starts"
# (a waited job: never in the store, so nothing of it is kept for the next start)
STOPPED = "the daemon stopped before the job finished; retry it (with its idempotency key) when the daemon is back"


class Service(Acceptance):
    """wire.Frontend over this host's engine (entry checks: sandboxd.jobs.frontend)."""

    metrics: Metrics

    def __init__(
        self,
        engine: Engine,
        metrics: Metrics | None = None,
        results_ttl: float = JOBS.results_ttl,
        callback_allow_private: bool = False,
        store: JobStore | None = None,
        sessions: SessionsSettings | None = None,
        files: HostFiles | None = None,
    ) -> None:
        super().__init__(metrics or Metrics(), callback_allow_private)
        self.engine = engine
        self.sessions = Sessions(engine, sessions or SessionsSettings(), self._session_ended)
        self.sessions.tenants = lambda: self.tenants
        self.metrics.sessions_active.set_function(lambda: self.sessions.active)
        self._callbacks: set[asyncio.Task[Any]] = set()
        self.compiler = Compiler(engine)  # single flight for the compat kinds' compiles
        self.compat_pending = 0  # jobs of compat kinds not finished: Judge0's queue count
        self.results_ttl = results_ttl
        self.store = store or JobStore(":memory:", results_ttl)
        # Results waiting to join a batch commit as a box starts a run, once they have waited half their time.
        self._while_running = functools.partial(self.store.flush_due, LATER / 2)
        engine.while_running = self._while_running
        self.table = JobTable(self.store, results_ttl)
        self.jobs = self.table.jobs  # unfinished (and final, not yet saved) jobs by id
        self.recent = RunTimes()  # recent run wall times and per-second buckets, for status and the dashboard
        self._sweeper: asyncio.Task[None] | None = None
        self._heals_counted = 0  # engine heals already added to the metrics counter
        self.files = files  # the content-addressed store (sandboxd.jobs.files), if this daemon has one
        if files is not None:
            engine.compile_store = files  # compiled programs: kept on disk, shared through the fleet

    def _session_ended(self, reason: str) -> None:
        self.metrics.sessions.labels(reason).inc()

    # --- start and stop ---------------------------------------------------

    def open(self) -> None:
        """At start, before serving: what a previous daemon acknowledged and did
        not finish runs again, in the order it was accepted."""
        again, lost = self.store.recover(lost_info)
        for s in again:
            self._restore(s)
        if again or lost:
            log.warning("job store: %d unfinished jobs run again, %d lost", len(again), len(lost))
        self._sweeper = asyncio.ensure_future(self._sweep())

    def _restore(self, s: Stored) -> None:
        spec: Spec | None = None
        try:
            # (checked as at acceptance, KINDS.decode: its runs are not validated again)
            spec = decode_spec(s.kind, s.spec or b"")[1]
        except Exception as e:  # written by another version this one cannot read, or whose checks it fails
            log.error("job %s: cannot read its spec (%s); it fails", s.id, e)
        age = max(0.0, time.time() - s.created_at)
        lang = KINDS.of(spec).lang(spec) if spec is not None else ""
        job = Job(s.id, kind_of(s.kind), lang, created=time.monotonic() - age, created_at=s.created_at)
        job.durable, job.callback_url, job.key, job.fingerprint = True, s.callback_url, s.key, s.fingerprint
        job.spec_size = len(s.spec or b"")
        self.table.add(job)
        if spec is None:
            job.state, job.error = "failed", make("internal", "its request could not be read back after a restart")
            self._finish(job)
            return
        # Acknowledged by an earlier daemon: admitted whatever the queues and budget hold.
        job.admission = self._admit(job.lang, spec, force=True)
        self._hold(job, spec)
        self._start(job, s.kind, spec)

    async def _sweep(self) -> None:
        every = max(0.5, min(60.0, self.results_ttl / 4))
        while True:
            await asyncio.sleep(every)
            try:
                await self.store.sweep()
            except Exception as e:
                log.error("job store: sweep failed: %s", e)

    async def close(self) -> None:
        """After drain: the store has every result and every kept job."""
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self.engine.while_running is self._while_running:  # (an engine outlives its services in tests)
            self.engine.while_running = None
        await self.store.close()

    # --- job life cycle ---------------------------------------------------

    def _new_job(self, kind: Literal["run", "submission"], lang: str = "", job_id: str | None = None) -> Job:
        self.refuse_if_draining()
        if job_id is not None and self.table.in_use(job_id):
            raise error("bad_request", f"job id {job_id!r} is in use")
        return Job(job_id or secrets.token_urlsafe(12), kind, lang)

    def _start(self, job: Job, op: Op, spec: Spec) -> None:
        kind = job.handler = KINDS.of(spec)
        job.results = ResultHold(self.engine.budget)
        if kind.compat:
            job.spec, job.lang = spec, kind.lang(spec)
            self.compat_pending += 1

        async def work() -> None:
            # (the kind's coroutine is made here: a task cancelled before its first step leaves none unawaited)
            await self._guard(job, self._execute(kind, job, spec))

        adm = job.admission
        # (its runs use the queue places promised at admission)
        job.task = asyncio.ensure_future(work()) if adm is None else adm.spawn(work())
        job.task.add_done_callback(lambda _: self._ended(job))

    async def _execute(self, kind: Any, job: Job, spec: Spec) -> Any:
        if self.files is not None:
            await self.files.resolve(spec)  # (hashes named: their bytes, fetched from the fleet if need be)
        return await kind.execute(self, job, spec)

    async def _check_files(self, spec: Spec) -> None:
        """Refused before it is acknowledged: a job naming a file the store lacks."""
        if self.files is not None:
            await self.files.check_refs(spec)
        elif refs_of(spec):
            raise error("bad_request", f"{refs_of(spec)[0][0]}: this daemon has no file store")

    def _hold(self, job: Job, spec: Spec) -> None:
        if self.files is not None:
            self.files.hold(job.id, spec)

    def _ended(self, job: Job) -> None:
        """Its task is over.  A task cancelled before its first step never ran
        the work, so no finally of _guard finished the job: finish it here, or
        its waiters hang and the job, its key and its admission stay forever."""
        if job.admission is not None:
            job.admission.close()  # (idempotent)
        if not job.done.is_set():
            job.state, job.error = "cancelled", make("cancelled")
            self._finish(job)

    def _admit(self, lang: str, spec: Spec, force: bool = False) -> Admission:
        """Refused here, before the job is acknowledged, when a queue or the
        memory budget is full: an accepted job never fails for it later."""
        runs = KINDS.of(spec).runs(spec)
        try:
            return self.engine.admit(lang or None, runs, spec, "the run" if runs == 1 else "the submission", force)
        except QueueFull as e:
            raise self.refused("queue_full", str(e), e.retry_after) from None

    def _finish(self, job: Job) -> None:
        if job.admission is not None:
            job.admission.close()  # (idempotent: the task's done callback closes it too)
        job.finished, job.finished_at = time.monotonic(), time.time()
        if job.charge is not None:
            job.charge.close(job.result)  # (its CPU seconds to its tenant's quota)
        if self.files is not None:
            self.files.release(job.id)
        if job.requeue:
            # "draining" (HTTP 503 + Retry-After), not "cancelled": its waiters retry
            # (with their key) and get the job when the next start has run it.
            job.error = make("draining", STOPPED if job.waited else REQUEUED)
        job.done.set()
        if job.callback_url and not job.requeue:
            self._background(callbacks.deliver(job.callback_url, job.info(), self.callback_allow_private))
        kind = job.handler
        if kind is not None and kind.compat:
            self.compat_pending -= 1
        if kind is not None and job.spec is not None and job.notify and not job.requeue and kind.notifies(job.spec):
            self._background(kind.finished(job.id, job.spec, job.info(), self.callback_allow_private))
        if job.durable and not job.requeue:
            self.table.save(job)  # (its result's hold given back once saved)
            return
        if job.results is not None:
            job.results.release()
        if not job.durable or job.waited:
            # (a fleet job: its HostWorker holds it until Redis has the result; a waited
            # job cut off by a stop: nothing kept, its client's retry runs it again)
            self.table.drop(job)
            if job.accepted is not None and not job.accepted.done():  # (a retry about to acknowledge it)
                job.accepted.set_exception(error("draining", STOPPED))
        else:
            self.store.release(job.id)

    def _background(self, coro: Coroutine[Any, Any, Any]) -> None:
        t = asyncio.ensure_future(coro)
        self._callbacks.add(t)
        t.add_done_callback(self._callbacks.discard)

    def _check_compat(self, spec: Spec) -> None:
        lang = KINDS.of(spec).lang(spec)
        if lang not in self.engine.languages:
            raise error("bad_request", f"lang: {lang!r} is not served here")

    # Jobs of a fleet host (sandboxd.fleet.executor): started at once, not durable here.

    def submit_spec(
        self,
        spec: Spec,
        progress: Progress | None = None,
        *,
        notify: bool = True,
        tenant: tuple[str, float] | None = None,
    ) -> Job:
        """A job of any registered kind (sandboxd.jobs.kinds), its spec checked as
        one read back from Redis.  A compat kind's (Judge0, Piston) is a native job
        of kind "submission" (ids, draining refusal, state, errors, cancellation,
        expiry, metrics as for every job) whose work is the kind's own translation
        onto the engine.  notify=False: the caller delivers what follows the result
        (a fleet host, once Redis has taken it).  tenant: (name, weight) of a
        fleet job's tenant (its limits were applied by the coordinator): whose
        share of this host's boxes the job's runs take."""
        kind = KINDS.of(spec)
        kind.check(spec)
        lang = kind.lang(spec)
        if lang:
            self._check_compat(spec)
        job = self._new_job(kind.public, lang)
        job.notify = notify
        return self._start_now(job, kind.op, spec, None, progress, tenant)

    def submit_run(self, req: RunRequest, callback_url: str | None = None) -> Job:
        validate_run(req)
        return self._start_now(self._new_job("run"), "run", req, callback_url)

    def submit(self, sub: Submission, progress: Progress | None = None, callback_url: str | None = None) -> Job:
        validate_submission(sub)
        self.engine.language(sub.lang)
        return self._start_now(self._new_job("submission", sub.lang), "submit", sub, callback_url, progress)

    def _start_now(
        self,
        job: Job,
        op: Op,
        spec: Spec,
        cb: str | None,
        progress: Progress | None = None,
        tenant: tuple[str, float] | None = None,
    ) -> Job:
        """Admitted and started at once, not durable here (a fleet host's: its HostWorker holds it)."""
        job.callback_url = cb
        if progress is not None:
            job.listeners.append(progress)
        job.admission = self._admit(job.lang, spec)
        if tenant is not None:
            job.admission.ticket.tenant, job.admission.ticket.weight = tenant
        self.table.add(job)
        self._hold(job, spec)
        self._start(job, op, spec)
        return job

    async def _guard(self, job: Job, work: Any) -> None:
        try:
            job.result = await work
            job.state = "done"
            if job.results is not None:
                job.results.settle(job.result)  # (its output and figures: its files out are counted)
        except asyncio.CancelledError:
            job.state = "cancelled"
            job.error = make("cancelled")
        except QueueFull as e:
            job.state, job.error = "failed", self.refused("queue_full", str(e), e.retry_after).err
        except QueueDeadline as e:
            job.state, job.error = "failed", self.refused("queue_deadline", str(e)).err
        except SchemaError as e:
            job.state, job.error = "failed", bad_request(e).err
        except Exception as e:
            log.exception("job %s failed", job.id)
            job.state, job.error = "failed", make("internal", f"internal error: {e}")
        finally:
            self._finish(job)

    def get(self, job_id: str) -> Job:
        """A job in memory (unfinished, or a recent result)."""
        job = self.table.cached(job_id)
        if job is None:
            raise error("not_found", f"no job {job_id!r} in memory")
        return job

    async def wait(self, job: Job, timeout: float | None = None) -> JobInfo:
        if timeout is None:
            await job.done.wait()
        else:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(job.done.wait(), timeout)
        return job.info()

    def cancel(self, job_id: str) -> JobInfo:
        return self._cancel(self.get(job_id))

    @staticmethod
    def _cancel(job: Job) -> JobInfo:
        if job.task is not None and not job.task.done():
            job.task.cancel()
        return job.info()

    # --- the transports' view (wire.Frontend) ------------------------------

    async def _start_run(self, req: RunRequest, callback_url: str | None, key: str | None, waited: bool) -> JobInfo:
        job = self._new_job("run")
        job.callback_url = callback_url
        return await self._accept(job, "run", req, key, waited=waited)

    async def _start_submission(
        self, sub: Submission, progress: Progress | None, callback_url: str | None, key: str | None, waited: bool
    ) -> JobInfo:
        self.engine.language(sub.lang)
        job = self._new_job("submission", sub.lang)
        job.callback_url = callback_url
        return await self._accept(job, "submit", sub, key, progress, waited)

    async def job_info(self, job_id: str) -> JobInfo:
        found = await self.table.find(job_id)
        return found.info() if isinstance(found, Job) else found

    async def wait_job(self, job_id: str, timeout: float | None = None) -> JobInfo:
        found = await self.table.find(job_id)
        return await self.wait(found, timeout) if isinstance(found, Job) else found

    # --- the compat APIs' view (sandboxd.jobs.backend.Backend) --------------------

    async def start_compat(self, spec: Spec, job_id: str, *, idempotency_key: str | None = None) -> JobInfo:
        self._check_compat(spec)
        kind = KINDS.of(spec)
        return await self._accept(self._new_job(kind.public, kind.lang(spec), job_id), kind.op, spec, idempotency_key)

    async def compat_job(self, job_id: str) -> tuple[Spec, JobInfo] | None:
        return await self.table.compat(job_id)

    async def forget_job(self, job_id: str) -> Literal["ok", "missing", "pending"]:
        return await self.table.forget(job_id)

    async def compat_languages(self) -> dict[str, Served]:
        eng = self.engine
        return {lid: Served(lang, eng.versions.get(lid, "")) for lid, lang in eng.languages.items()}

    async def compat_load(self) -> Load:
        return servicestatus.compat_load(self)

    async def cancel_job(self, job_id: str) -> JobInfo:
        found = await self.table.find(job_id)
        return self._cancel(found) if isinstance(found, Job) else found

    async def status_info(self) -> dict[str, Any]:
        st = self.status()
        if self.tenants.configured:
            st["tenants"] = self.tenants.status()
        return st

    async def language_list(self) -> list[dict[str, Any]]:
        return self.languages()

    async def dashboard_info(self) -> dict[str, Any]:
        return {**self.status(), "now": time.time(), "series": self.recent.series()}

    async def _refresh_metrics(self) -> None:
        self.refresh_metrics()

    def unready_reason(self) -> str | None:
        if self.draining:
            return "draining"
        problem = self.engine.health.check()
        if problem is not None:
            return problem
        if not any(p.stats.warm or p.stats.busy for p in self.engine.pools.values()):
            return "no warm box yet"
        return None

    # --- state (sandboxd.jobs.status) -------------------------------------

    def status(self) -> dict[str, Any]:
        return servicestatus.status(self)

    def languages(self) -> list[dict[str, Any]]:
        return servicestatus.languages(self)

    def refresh_metrics(self) -> None:
        servicestatus.refresh_metrics(self)

    async def drain(self, grace: float) -> None:
        """Stop taking jobs; let running ones finish within `grace` seconds, then cancel the rest."""
        self.draining = True
        unfinished = self.table.unfinished()
        pending = [j.task for j in unfinished if j.task is not None]
        if pending:
            log.info("draining: waiting up to %.0f s for %d jobs", grace, len(pending))
            _, late = await asyncio.wait(pending, timeout=grace)
            for j in unfinished:
                if j.task in late:
                    # Acknowledged, so kept: it runs again at the next start (a waited
                    # one, acknowledged by nothing yet, is not: its waiter is told to retry).
                    j.requeue = j.durable
                    j.task.cancel()
            if late:
                log.warning("draining: cancelled %d jobs after the grace period", len(late))
                await asyncio.wait(late, timeout=5)
