"""Job kinds: what a job runs, each kind one object.

A kind (the core's `run` and `submission`, and whatever a plug-in registers:
sandboxd.compat adds `judge0` and `piston`) knows how to decode its spec
from the job store or Redis, encode and fingerprint it, what it costs at
admission and in the fleet, how it executes on a host daemon's Service, and
what follows its final result.  Service, JobTable and the fleet's host and
coordinator look kinds up here (by the spec's type, or by a stored name);
none of them names a plug-in, and the core imports nothing of compat.

Stored names.  A job's kind is stored as `op` in the job store (SQLite) and
in fingerprints, and as the fleet job kind in Redis.  These stay the names
earlier versions wrote ("run"/"submit"/"compat" and "run"/"submission"/
"compat"): several kinds share one name when their specs tell them apart,
as Judge0's and Piston's do by their `api` tag (a tagged msgspec union).
So during a rolling upgrade either version reads what the other wrote, and
an idempotency key keeps naming the same request across the upgrade.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Generic, Literal, Protocol, TypeVar

import msgspec

from sandboxd.judging.judge import judge
from sandboxd.schema import (
    JobInfo,
    RunRequest,
    RunResult,
    Submission,
    SubmissionResult,
    TestResult,
    validate_run,
    validate_submission,
)

if TYPE_CHECKING:
    from sandboxd.engine.compiler import Compiler
    from sandboxd.engine.engine import Engine
    from sandboxd.jobs.files import HostFiles
    from sandboxd.jobs.metrics import Metrics
    from sandboxd.jobs.table import Job
    from sandboxd.jobs.timeseries import RunTimes

S = TypeVar("S", bound=msgspec.Struct)
Result = RunResult | SubmissionResult


class Context(Protocol):
    """What a kind's work runs on: a host daemon's Service."""

    engine: Engine
    compiler: Compiler
    metrics: Metrics
    recent: RunTimes
    files: HostFiles | None


class JobKind(Generic[S]):
    """One kind of job.  Subclasses set the names and spec type and override
    what differs; the defaults are a plain one-box job that notifies nobody."""

    name: str  # "run", "submission", "judge0", "piston": the registry's key, logs
    op: str  # stored name in the job store and in fingerprints
    fleet: str  # stored name of the fleet job kind in Redis
    public: Literal["run", "submission"]  # JobInfo.kind, what clients see
    spec_type: type[S]
    # A compatibility API's job: fleet queues of its own (sandboxd.fleet.keys),
    # counted in Backend.compat_load, its spec kept with its record (compat_job).
    compat: bool = False

    def lang(self, spec: S) -> str:
        """The language whose pool and queues it runs on ("" = a plain run)."""
        return str(getattr(spec, "lang", ""))

    def runs(self, spec: S) -> int:
        """Box runs admission promises it (sandboxd.engine.budget)."""
        return 1

    def cost(self, spec: S) -> int:
        """Boxes it can keep busy at once: a fleet host claims it only with that many free."""
        return 1

    def check(self, spec: S) -> S:
        """The checks msgspec cannot express, for a spec read back from the job
        store or Redis (SchemaError): paths stay inside the box."""
        return spec

    def set_deadline(self, spec: S, left: float) -> None:
        """The fleet queue used part of the spec's queue deadline: the host queue gets the rest."""

    async def execute(self, ctx: Context, job: Job, spec: S) -> Result:
        raise NotImplementedError

    def notifies(self, spec: S) -> bool:
        """Whether `finished` is to be called once its final result is readable."""
        return False

    async def finished(self, job_id: str, spec: S, info: JobInfo, allow_private: bool) -> None:
        """What follows its final result (Judge0's callback), delivered by whoever made it final."""


class RunKind(JobKind[RunRequest]):
    name, op, fleet, public, spec_type = "run", "run", "run", "run", RunRequest

    def check(self, spec: RunRequest) -> RunRequest:
        return validate_run(spec)

    def set_deadline(self, spec: RunRequest, left: float) -> None:
        spec.queue_deadline = max(0.001, left)

    async def execute(self, ctx: Context, job: Job, spec: RunRequest) -> Result:
        job.state = "running"
        t0 = time.monotonic()
        deadline = None if spec.queue_deadline is None else job.created + spec.queue_deadline
        room = job.results.room if job.results is not None and spec.files_out else None
        # (checked: every job's spec passed check() when it was accepted or restored)
        res = await ctx.engine.run(spec, priority=spec.priority, deadline=deadline, room=room, checked=True)
        ctx.recent.append(res.wall_time)
        ctx.metrics.run_seconds_of(res.status).observe(time.monotonic() - t0)
        return res


class SubmissionKind(JobKind[Submission]):
    name, op, fleet, public, spec_type = "submission", "submit", "submission", "submission", Submission

    def runs(self, spec: Submission) -> int:
        return 1 + len(spec.tests)

    def cost(self, spec: Submission) -> int:
        return max(1, len(spec.tests) * (2 if spec.interactor is not None else 1))

    def check(self, spec: Submission) -> Submission:
        return validate_submission(spec)

    def set_deadline(self, spec: Submission, left: float) -> None:
        spec.queue_deadline = max(0.001, left)

    async def execute(self, ctx: Context, job: Job, spec: Submission) -> Result:
        def progress(t: TestResult) -> None:
            ctx.metrics.verdicts_of("test", t.verdict).inc()
            ctx.recent.append(t.wall_time)
            for cb in job.listeners:
                cb(t)

        job.state = "running"
        t0 = time.monotonic()
        res = await judge(ctx.engine, spec, progress, None if ctx.files is None else ctx.files.store.read)
        ctx.metrics.verdicts_of("submission", res.verdict).inc()
        ctx.metrics.submission_seconds_of(spec.lang).observe(time.monotonic() - t0)
        return res


class UnknownKind(ValueError):
    """A stored name or spec type no registered kind has (another version wrote it)."""


class Registry:
    """The kinds this process knows, by name, by spec type and by stored name."""

    def __init__(self, *kinds: JobKind[Any]) -> None:
        self._named: dict[str, JobKind[Any]] = {}
        self._typed: dict[type, JobKind[Any]] = {}
        self._decoders: dict[tuple[str, str], msgspec.msgpack.Decoder[Any]] = {}
        self._enc = msgspec.msgpack.Encoder()
        for k in kinds:
            self.add(k)

    def add(self, kind: JobKind[Any]) -> None:
        """Register a kind (again: a no-op; another kind of that name: an error)."""
        known = self._named.get(kind.name)
        if known is kind:
            return
        if known is not None or kind.spec_type in self._typed:
            raise ValueError(f"job kind {kind.name!r}: a kind of that name or spec type is registered")
        self._named[kind.name] = kind
        self._typed[kind.spec_type] = kind
        self._decoders.clear()

    def named(self, name: str) -> JobKind[Any]:
        return self._named[name]

    def of(self, spec: msgspec.Struct) -> JobKind[Any]:
        kind = self._typed.get(type(spec))
        if kind is None:
            raise UnknownKind(f"no job kind runs a {type(spec).__name__}")
        return kind

    def kinds(self) -> list[JobKind[Any]]:
        return list(self._named.values())

    def encode(self, spec: msgspec.Struct) -> bytes:
        return self._enc.encode(spec)

    def _decoder(self, field: str, stored: str) -> msgspec.msgpack.Decoder[Any]:
        dec = self._decoders.get((field, stored))
        if dec is None:
            types = tuple(k.spec_type for k in self._named.values() if getattr(k, field) == stored)
            if not types:
                raise UnknownKind(f"unknown job kind {stored!r}")
            # Several kinds under one stored name: their specs' tags tell them apart.
            dec = msgspec.msgpack.Decoder(types[0] if len(types) == 1 else _union(types))
            self._decoders[(field, stored)] = dec
        return dec

    def _decode(self, field: str, stored: str, data: bytes) -> tuple[JobKind[Any], Any]:
        spec = self._decoder(field, stored).decode(data)
        kind = self.of(spec)
        return kind, kind.check(spec)

    def decode(self, op: str, data: bytes) -> tuple[JobKind[Any], Any]:
        """A job store row's spec (its `op`).  Raises UnknownKind, msgspec.DecodeError /
        ValidationError for a spec this version cannot read, SchemaError for one it refuses."""
        return self._decode("op", op, data)

    def decode_fleet(self, fleet_kind: str, data: bytes) -> tuple[JobKind[Any], Any]:
        """A fleet job's spec (its kind in Redis); raises as `decode`."""
        return self._decode("fleet", fleet_kind, data)

    def is_compat(self, field: Literal["op", "fleet"], stored: str) -> bool:
        """Whether a stored name is a compat kind's (read its spec back for Backend.compat_job)."""
        return any(k.compat and getattr(k, field) == stored for k in self._named.values())

    def public(self, op: str) -> Literal["run", "submission"]:
        """JobInfo.kind of a stored job; a name this version does not know reads as a submission."""
        for k in self._named.values():
            if k.op == op:
                return k.public
        return "submission"


def _union(types: tuple[type, ...]) -> Any:
    u: Any = types[0]
    for t in types[1:]:
        u = u | t
    return u


RUN = RunKind()
SUBMISSION = SubmissionKind()
# This process's kinds: the core's, plus what the app layer registers (sandboxd.compat.kinds).
KINDS = Registry(RUN, SUBMISSION)


def register(kind: JobKind[Any]) -> None:
    KINDS.add(kind)
