"""The operations every transport serves (sandboxd.api.wire.Frontend) and the
entry checks their two back ends share.

A host daemon's Service (sandboxd.jobs.service, over the engine) and the
fleet's Coordinator (sandboxd.fleet.coordinator, over Redis) check a request,
bind its idempotency key, refuse and count it here, the same way: each back end
does only what is its own (admission to the engine's queues and the job store,
or the fleet's enqueue script).  Imports nothing of the engine, so that a
coordinator loads no box code.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import NamedTuple

from sandboxd.errors import ServiceError, bad_request, error
from sandboxd.jobs import callbacks
from sandboxd.jobs.fingerprint import Op, Spec, fingerprint
from sandboxd.jobs.metrics import FrontendMetrics
from sandboxd.jobs.tenants import Tenants
from sandboxd.schema import (
    ErrorCode,
    JobInfo,
    RunRequest,
    SchemaError,
    Submission,
    TestResult,
    validate_run,
    validate_submission,
)

__all__ = ["MAX_KEY", "Keyed", "Operations", "Progress", "check_idempotency_key", "conflict", "keyed", "validated"]

MAX_KEY = 255
_KEY = re.compile(r"[\x21-\x7e]{1,%d}" % MAX_KEY)  # noqa: UP031 - {} is the regex's

Progress = Callable[[TestResult], None]


def check_idempotency_key(key: str | None, what: str = "idempotency_key") -> str | None:
    """An idempotency key: 1..255 printable ASCII characters, no spaces."""
    if key is not None and not _KEY.fullmatch(key):
        raise error("bad_request", f"{what}: must be 1..{MAX_KEY} printable ASCII characters (0x21-0x7e), e.g. a UUID")
    return key


class Keyed(NamedTuple):
    """An idempotency key and the request it is bound to (sandboxd.jobs.fingerprint)."""

    key: str
    fingerprint: bytes


def keyed(key: str | None, op: Op, spec: Spec, callback_url: str | None = None) -> Keyed | None:
    if check_idempotency_key(key) is None:
        return None
    return Keyed(str(key), fingerprint(op, spec, callback_url))


def conflict(key: str, job: str | None = None) -> ServiceError:
    """The key already names a job of another request."""
    started = f" (job {job})" if job else ""
    return error(
        "conflict", f"Idempotency-Key {key!r} was used for a different request{started}; use a new key for this one"
    )


def validated(spec: RunRequest | Submission) -> None:
    """The schema's checks (limits within the maxima, paths inside the box...)
    as the client's bad_request."""
    try:
        if isinstance(spec, RunRequest):
            validate_run(spec)
        else:
            validate_submission(spec)
    except SchemaError as e:
        raise bad_request(e) from None


class Operations(ABC):
    """The native operations of wire.Frontend with their entry checks; a back
    end implements the steps after them (`_start_run`, `_start_submission`) and
    the reads.  In order, for a run or a submission: the callback target, the
    request's schema, the idempotency key; then the back end (which calls
    `refuse_if_draining` and `refused` as it admits the job)."""

    role = "daemon"  # who refuses, in a draining refusal
    elsewhere = "host"  # where its client retries

    def __init__(self, metrics: FrontendMetrics, callback_allow_private: bool) -> None:
        self.metrics = metrics
        self.callback_allow_private = callback_allow_private
        self.draining = False
        self.tenants = Tenants()  # none configured until use_tenants

    def use_tenants(self, tenants: Tenants) -> None:
        """Serve these tenants (sandboxd.jobs.tenants): their limits at admission, their usage in /metrics."""
        self.tenants = tenants
        self.metrics.registry.register(tenants)

    # --- entry checks -------------------------------------------------------

    async def check_callback(self, url: str) -> None:
        await callbacks.check(url, self.callback_allow_private)

    def refused(self, code: ErrorCode, message: str, retry_after: float | None = None) -> ServiceError:
        """A job refused (queue_full, queue_deadline, draining): counted by its
        code in sandboxd_rejections, and the client's error."""
        self.metrics.rejections.labels(code).inc()
        return error(code, message, retry_after)

    def refuse_if_draining(self) -> None:
        if self.draining:
            raise self.refused("draining", f"the {self.role} is shutting down; retry on another {self.elsewhere}")

    async def _entry(self, spec: RunRequest | Submission, callback_url: str | None, key: str | None) -> str | None:
        """The checked idempotency key: the back end binds it (`keyed`) once it
        knows it needs to (not for a request its admission refuses first)."""
        if callback_url is not None:
            await self.check_callback(callback_url)
        validated(spec)
        return check_idempotency_key(key)

    # --- the operations -----------------------------------------------------

    async def start_run(
        self,
        req: RunRequest,
        callback_url: str | None = None,
        *,
        idempotency_key: str | None = None,
        waited: bool = False,
    ) -> JobInfo:
        """waited: its client hears of the job only by its result (a waited call
        that is sent no job id first): nothing is acknowledged before the end,
        so a host daemon writes it to its job store once, at its end
        (sandboxd.jobs.accept).  False (the default) is always safe."""
        key = await self._entry(req, callback_url, idempotency_key)
        try:
            return await self._start_run(req, callback_url, key, waited)
        except SchemaError as e:  # (the back end's own checks: a language it does not serve...)
            raise bad_request(e) from None

    async def start_submission(
        self,
        sub: Submission,
        progress: Progress | None = None,
        callback_url: str | None = None,
        *,
        idempotency_key: str | None = None,
        waited: bool = False,
    ) -> JobInfo:
        """waited: as start_run's."""
        key = await self._entry(sub, callback_url, idempotency_key)
        try:
            return await self._start_submission(sub, progress, callback_url, key, waited)
        except SchemaError as e:
            raise bad_request(e) from None

    async def metrics_text(self) -> bytes:
        await self._refresh_metrics()
        return self.metrics.render()

    def ready(self) -> bool:
        return self.unready_reason() is None

    # --- the back end's -----------------------------------------------------

    @abstractmethod
    async def _start_run(self, req: RunRequest, callback_url: str | None, key: str | None, waited: bool) -> JobInfo: ...

    @abstractmethod
    async def _start_submission(
        self, sub: Submission, progress: Progress | None, callback_url: str | None, key: str | None, waited: bool
    ) -> JobInfo: ...

    @abstractmethod
    async def _refresh_metrics(self) -> None:
        """Bring the gauges up to date before /metrics renders them."""

    @abstractmethod
    def unready_reason(self) -> str | None:
        """Why /readyz says 503, or None when ready."""
