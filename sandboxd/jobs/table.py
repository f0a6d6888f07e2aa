"""Where a daemon's jobs are kept: unfinished ones in memory, results in the store.

A job accepted through a transport is durable: it is in the JobStore before
it is acknowledged, and its result goes there when it is final (a waited job
acknowledged only by its result: only then, its one row).  Memory holds
only what is unfinished (a job's task, its waiters, its progress listeners),
plus a small cache of recent small results, so the daemon's size does not
grow with the job rate: a lookup that misses memory reads the store.

A job a fleet host claimed is not durable here (Redis holds it, and the fleet
re-queues it if this host dies): it lives in memory until it is final, and
its HostWorker holds it while it reports the result.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import msgspec

from sandboxd.errors import ServiceError, error
from sandboxd.jobs import resultblob
from sandboxd.jobs.fingerprint import Spec
from sandboxd.jobs.kinds import KINDS, JobKind
from sandboxd.jobs.store import EVICTED, EXPIRED, JobStore, NewJob, Stored
from sandboxd.schema import Error, JobInfo, RunResult, SubmissionResult, TestResult

if TYPE_CHECKING:
    from sandboxd.engine.budget import Admission, ResultHold
    from sandboxd.jobs.tenants import Charge

log = logging.getLogger(__name__)
State = Literal["queued", "running", "done", "cancelled", "failed", "lost"]
STATES: tuple[str, ...] = State.__args__  # type: ignore[attr-defined]
HOT = 256  # recent results kept in memory (each at most HOT_BYTES encoded)
HOT_BYTES = 64 << 10
# Progress listeners per job: each keyed replay of a submission adds one (its
# retrying client's); past this, the oldest (most likely a dropped connection's) go.
LISTENERS = 8

_enc = msgspec.msgpack.Encoder()


@dataclass(eq=False)
class Job:
    id: str
    kind: Literal["run", "submission"]
    lang: str = ""
    state: State = "queued"
    result: RunResult | SubmissionResult | None = None
    error: Error | None = None
    created: float = field(default_factory=time.monotonic)
    finished: float = 0.0
    task: asyncio.Task[None] | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)
    listeners: deque[Callable[[TestResult], None]] = field(default_factory=lambda: deque(maxlen=LISTENERS))
    callback_url: str | None = None
    created_at: float = field(default_factory=time.time)
    finished_at: float | None = None
    handler: JobKind[Any] | None = None  # its kind (sandboxd.jobs.kinds), once started
    spec: Spec | None = None  # the request of a kind whose record keeps it (a Judge0/Piston job's)
    notify: bool = True  # deliver what follows its result here (not when a fleet host runs it)
    durable: bool = False  # in the store (accepted through a transport), or its result once final (waited)
    waited: bool = False  # acknowledged only by its result: written to the store once, at its end
    request: Spec | None = None  # a keyed waited job's request, until final (sandboxd.jobs.accept._acknowledge)
    key: str | None = None  # its idempotency key
    fingerprint: bytes | None = None  # of the request the key was sent with
    accepted: asyncio.Future[JobInfo] | None = None  # resolves when the store has it
    requeue: bool = False  # stopped by a clean stop: the next start runs it again
    forgotten: bool = False  # deleted on request (Judge0's DELETE) before its result was saved
    spec_size: int = 0  # its encoded request: a compat job's spec stays with a cached result
    admission: Admission | None = None  # its queue places and request bytes (sandboxd.engine.budget), until final
    charge: Charge | None = None  # its hold on its tenant (sandboxd.jobs.tenants), until final
    results: ResultHold | None = None  # its result's bytes in the memory budget, until saved

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


def encode_spec(spec: Spec) -> bytes:
    return KINDS.encode(spec)


def decode_spec(op: str, data: bytes) -> tuple[JobKind[Any], Spec]:
    """A stored spec and its kind (sandboxd.jobs.kinds.Registry.decode)."""
    return KINDS.decode(op, data)


def kind_of(op: str) -> Literal["run", "submission"]:
    return KINDS.public(op)


def lost_info(s: Stored) -> bytes:
    msg = "lost: the daemon died twice while this job was unfinished; it is not run a third time"
    return _enc.encode(
        JobInfo(
            s.id,
            kind_of(s.kind),
            "lost",
            error=Error("internal", msg),
            created_at=s.created_at,
            finished_at=time.time(),
        )
    )


class JobTable:
    def __init__(self, store: JobStore, results_ttl: float) -> None:
        self.store = store
        self.ttl = results_ttl
        self.jobs: dict[str, Job] = {}  # unfinished, or final and not yet saved
        self.keys: dict[str, Job] = {}  # idempotency keys of the jobs in `jobs`
        self.hot: OrderedDict[str, Job] = OrderedDict()  # recent saved results

    def add(self, job: Job) -> None:
        self.jobs[job.id] = job
        if job.key is not None:
            self.keys[job.key] = job

    def in_use(self, job_id: str) -> bool:
        return job_id in self.jobs or job_id in self.hot

    def drop(self, job: Job) -> None:
        if self.jobs.get(job.id) is job:
            del self.jobs[job.id]
        if job.key is not None and self.keys.get(job.key) is job:
            del self.keys[job.key]

    def save(self, job: Job) -> None:
        """A final durable job: into the store (its row updated, or a waited
        job's one row inserted), then out of memory (a small result stays in
        the cache).  Until its row is written it stays in `jobs` (and its key
        in `keys`), so a lookup never falls between memory and store."""
        # (a large result is split, not encoded: written from its own bytes, sandboxd.jobs.resultblob)
        blob = resultblob.encode(job.info(), 0 if job.results is None else job.results.size)
        size = len(blob) + (job.spec_size if job.spec is not None else 0)
        at = job.finished_at or time.time()
        done = functools.partial(self._saved, job, size)
        if not job.waited:
            self.store.finish(job.id, job.state, blob, at, done)
            return
        op = job.handler.op if job.handler is not None else job.kind
        row = NewJob(job.id, op, b"", job.created_at, job.callback_url, job.key, job.fingerprint)
        self.store.record(row, job.state, blob, at, done)

    def _saved(self, job: Job, size: int, ok: bool, err: Any) -> None:
        if not ok:
            log.error("job store: the result of job %s was not saved: %s", job.id, err)
        self.drop(job)
        if job.results is not None:
            job.results.release()  # (the store has it; memory keeps it only if small: `hot`)
        job.listeners.clear()  # (closures over connections that may be gone)
        job.task = job.request = None
        acc = job.accepted
        if acc is not None and not acc.done():  # (a waited job a keyed retry acknowledges: this row is its ack)
            if ok:
                acc.set_result(job.info())
            else:
                acc.set_exception(error("internal", f"the job store did not save job {job.id}: {err}"))
        if size <= HOT_BYTES and not job.forgotten:
            self.hot[job.id] = job
            while len(self.hot) > HOT:
                self.hot.popitem(last=False)

    def cached(self, job_id: str) -> Job | None:
        job = self.jobs.get(job_id)
        if job is not None:
            return job
        job = self.hot.get(job_id)
        if job is not None and time.monotonic() - job.finished > self.ttl:
            del self.hot[job_id]
            return None
        return job

    def _expired(self, job_id: str) -> ServiceError:
        return error("not_found", f"job {job_id!r} expired: results are kept {self.ttl:g} s after a job finishes")

    def _stored_info(self, s: Stored) -> JobInfo:
        if s.state == EXPIRED:
            raise self._expired(s.id)
        if s.state == EVICTED:
            why = f"job {s.id!r} evicted: the job store was full (jobs.store_max_bytes), oldest results go first"
            raise error("not_found", why)
        if s.info is None:  # committed, its task about to start
            return JobInfo(s.id, kind_of(s.kind), "queued", created_at=s.created_at)
        info = resultblob.decode(s.info)
        if info.finished_at is not None and time.time() - info.finished_at > self.ttl:
            raise self._expired(s.id)  # (not yet swept)
        return info

    def held_info(self, s: Stored) -> JobInfo:
        """The job that already holds an idempotency key, as its new sender gets it."""
        return self._stored_info(s)

    async def find(self, job_id: str) -> Job | JobInfo:
        """The job (in memory) or its final record (from the store)."""
        job = self.cached(job_id)
        if job is not None:
            return job
        s = await self.store.get(job_id)
        if s is None:
            raise error(
                "not_found", f"no job {job_id!r}: never issued by this daemon, or expired over {2 * self.ttl:g} s ago"
            )
        return self._stored_info(s)

    async def compat(self, job_id: str) -> tuple[Spec, JobInfo] | None:
        """A compat kind's job: its spec and state (Backend.compat_job)."""
        job = self.cached(job_id)
        if job is not None:
            return None if job.spec is None else (job.spec, job.info())
        s = await self.store.get(job_id)
        if s is None or s.spec is None or not KINDS.is_compat("op", s.kind):
            return None
        try:
            info = self._stored_info(s)
        except ServiceError:
            return None
        return decode_spec(s.kind, s.spec)[1], info

    async def forget(self, job_id: str) -> Literal["ok", "missing", "pending"]:
        job = self.jobs.get(job_id)
        if job is not None and not job.done.is_set():
            return "pending"
        if job is not None:
            job.forgotten = True
            self.drop(job)
            job.spec = job.result = None  # (its save is queued: free what it held now)
        cached = self.hot.pop(job_id, None)
        found = await self.store.forget(job_id)
        return "ok" if found or job is not None or cached is not None else "missing"

    def counts(self) -> dict[str, int]:
        counts = dict.fromkeys(STATES, 0)
        for src in (self.jobs, self.hot):
            for j in src.values():
                counts[j.state] += 1
        return counts

    def unfinished(self) -> list[Job]:
        return [j for j in self.jobs.values() if j.task is not None and not j.task.done()]
