"""What a fleet host runs claimed jobs on: its daemon's Service.

A claimed job is decoded by its kind (sandboxd.jobs.kinds: the fleet job
kind names it, as Redis stores it) and becomes an ordinary job of the host's
Service: the same queues, boxes and metrics as a job sent to the host itself.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec

from sandboxd.errors import ServiceError
from sandboxd.fleet.host import BadJob, HandBack, Running
from sandboxd.fleet.keys import RUN_LANG
from sandboxd.jobs.fingerprint import Spec
from sandboxd.jobs.kinds import KINDS, JobKind, UnknownKind
from sandboxd.jobs.service import Job, Service
from sandboxd.jobs.timeseries import SERIES_SECONDS, Bucket
from sandboxd.schema import JobInfo, SchemaError, TestResult


def decode_spec(kind: str, spec: bytes) -> tuple[JobKind[Any], Spec]:
    """A claimed job's spec, decoded and checked as a spec sent to this host is
    (paths stay inside the box); BadJob (it is quarantined) if it does not."""
    try:
        return KINDS.decode_fleet(kind, spec)
    except UnknownKind as e:
        raise BadJob(str(e)) from None
    except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError, SchemaError) as e:
        raise BadJob(f"{kind} spec: {e}") from None


class ServiceExecutor:
    """Claimed jobs become ordinary jobs of the host's Service (same queues, boxes, metrics)."""

    def __init__(self, svc: Service) -> None:
        self.svc = svc

    def pools(self) -> dict[str, tuple[int, int]]:
        return {name: (q.capacity, q.running + q.depth) for name, q in self.svc.engine.queues.items()}

    def pool_of(self, lang: str) -> str | None:
        eng = self.svc.engine
        if lang in ("", RUN_LANG):
            return "host"
        spec = eng.languages.get(lang)
        return eng.pool_of(spec) if spec is not None else None

    def languages(self) -> list[dict[str, Any]]:
        return self.svc.languages()

    def series(self) -> list[Bucket]:
        return self.svc.recent.series(SERIES_SECONDS)

    def definitions(self) -> dict[str, Any]:
        return {lid: msgspec.to_builtins(lang) for lid, lang in self.svc.engine.languages.items()}

    def start(
        self,
        kind: str,
        spec: bytes,
        deadline_left: float | None,
        on_test: Callable[[TestResult], None] | None,
        tenant: tuple[str, float] | None = None,
    ) -> Running:
        handler, job = decode_spec(kind, spec)
        # The fleet queue already used part of the deadline: the host queue gets the rest.
        if deadline_left is not None:
            handler.set_deadline(job, deadline_left)
        try:
            # notify=False: a coordinator delivers what follows the result (a Judge0
            # callback) once Redis has it.
            return _ServiceRun(self.svc, self.svc.submit_spec(job, on_test, notify=False, tenant=tenant))
        except (SchemaError, ServiceError) as e:
            # The spec is valid (decode_spec said so): this host cannot take it
            # now (stopping, or its language went away in a rootfs reload).
            # Another host can; this one no longer claims from that queue.
            raise HandBack(str(e)) from None


class _ServiceRun:
    def __init__(self, svc: Service, job: Job) -> None:
        self.svc, self.job = svc, job

    def cancel(self) -> None:
        self.svc.cancel(self.job.id)

    async def result(self) -> JobInfo:
        await self.job.done.wait()
        return self.job.info()
