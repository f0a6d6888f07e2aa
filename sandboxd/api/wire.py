"""Dispatch of wire requests onto the service, shared by the Unix socket and HTTP.

A request names an op and carries a body in the transport's format (JSON or
msgpack); bodies are decoded with the schema types, so a bad field gets the
same precise error on every transport.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

from sandboxd.api import files
from sandboxd.api.bodies import Body
from sandboxd.api.bodies import Format as Format  # (defined there; the transports import it from here)
from sandboxd.api.bodies import decode as decode
from sandboxd.api.inbound import decode_body
from sandboxd.bodyhold import stored
from sandboxd.errors import bad_request, error
from sandboxd.jobs.backend import Backend
from sandboxd.jobs.frontend import check_idempotency_key as check_idempotency_key  # (an entry check, shared)
from sandboxd.jobs.tenants import Tenants
from sandboxd.schema import JobInfo, JobRef, RunRequest, SchemaError, Submission, TestResult

T = TypeVar("T")


class Frontend(Backend, Protocol):
    """What the transports (Unix socket, HTTP) serve: a host daemon's Service,
    or the fleet's Coordinator; the Judge0/Piston APIs use the Backend part.
    Job ids are strings; every call may raise ServiceError with a wire code."""

    @property
    def draining(self) -> bool: ...

    tenants: Tenants  # (sandboxd.jobs.tenants: the callers' limits)

    async def start_run(
        self,
        req: RunRequest,
        callback_url: str | None = None,
        *,
        idempotency_key: str | None = None,
        waited: bool = False,
    ) -> JobInfo: ...

    async def start_submission(
        self,
        sub: Submission,
        progress: Callable[[TestResult], None] | None = None,
        callback_url: str | None = None,
        *,
        idempotency_key: str | None = None,
        waited: bool = False,
    ) -> JobInfo: ...

    async def job_info(self, job_id: str) -> JobInfo: ...

    async def cancel_job(self, job_id: str) -> JobInfo: ...

    async def status_info(self) -> dict[str, Any]: ...

    async def dashboard_info(self) -> dict[str, Any]:
        """status_info plus `now` and `series`: run times per second (sandboxd.jobs.timeseries)."""
        ...

    async def language_list(self) -> list[dict[str, Any]]: ...

    async def metrics_text(self) -> bytes: ...

    def ready(self) -> bool: ...


async def _ping(svc: Frontend, body: Body, fmt: Format) -> Any:
    return {"pong": True}


async def _status(svc: Frontend, body: Body, fmt: Format) -> Any:
    return await svc.status_info()


async def _languages(svc: Frontend, body: Body, fmt: Format) -> Any:
    return await svc.language_list()


# Ops answered at once, no job: op -> its handler.
_SIMPLE: dict[str, Callable[[Frontend, Body, Format], Awaitable[Any]]] = {
    "ping": _ping,
    "status": _status,
    "languages": _languages,
    "files": files.socket_op,
}


async def dispatch(
    svc: Frontend,
    op: str,
    body: Body,
    fmt: Format,
    *,
    wait: bool = True,
    timeout: float | None = None,
    progress: Callable[[TestResult], None] | None = None,
    on_job: Callable[[str], None] | None = None,
    callback_url: str | None = None,
    idempotency_key: str | None = None,
    result_only: bool = False,
) -> Any:
    """Run one op; returns the reply payload (a schema object or plain data).
    idempotency_key (run, submit): the same key and request name the same job;
    with `wait`, the reply is that job's result.  result_only: the transport
    sends its client nothing of the job before that result (no job id: no
    `accepted` event or frame), so a waited job is acknowledged only by its
    result and is not written to the job store before it (Frontend.start_run's
    `waited`); False (the default) keeps the commit before the acknowledgement."""
    try:
        if op in _SIMPLE:
            return await _SIMPLE[op](svc, body, fmt)
        if op in ("get", "wait", "cancel"):
            ref = decode(body, JobRef, fmt)
            if op == "cancel":
                return await svc.cancel_job(ref.job)
            if op == "wait":
                return await svc.wait_job(ref.job, timeout)
            return await svc.job_info(ref.job)
        key = check_idempotency_key(idempotency_key)
        waited = wait and result_only
        if op == "run":
            # (Large bodies are decoded off the event loop: sandboxd.api.inbound.)
            req = await decode_body(body, RunRequest, fmt)
            del body  # (not held while the run is waited for: its job's reservation counts the decoded request)
            info = await svc.start_run(req, callback_url, idempotency_key=key, waited=waited)
        elif op == "submit":
            sub = await decode_body(body, Submission, fmt)
            del body
            info = await svc.start_submission(sub, progress, callback_url, idempotency_key=key, waited=waited)
        else:
            raise error("bad_request", f"op: unknown {op!r}")
        stored()  # (its body's copies are gone: the rest of its hold given back, not kept while it is waited for)
    except SchemaError as e:
        raise bad_request(e) from None
    if on_job is not None:
        on_job(info.job)
    if not wait:
        return JobInfo(info.job, info.kind, info.state)
    info = await svc.wait_job(info.job)
    if info.error is not None:
        raise error(info.error.code, info.error.message, info.error.retry_after)
    return info.result
