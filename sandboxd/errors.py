"""The errors every operation raises toward a client, and the one table of them.

`CODES` is the only place a wire code gets its HTTP status, its default
Retry-After and its default message: the Unix socket sends the code, the HTTP
API (sandboxd.api.httpserver) the status from here, and the Judge0/Piston APIs
keep their own bodies but take a status from here where theirs is the native
one.  Its own module, in the shared layer, so that the transports, the
compatibility APIs and the fleet can raise and map errors without importing the
service (which imports them)."""

from __future__ import annotations

from typing import NamedTuple

from sandboxd.schema import Error, ErrorCode, SchemaError

RETRY_AFTER = 1.0  # seconds a refusal tells its client to wait when nothing better is known


class Code(NamedTuple):
    status: int  # HTTP status of the native API
    retry_after: float | None  # a refusal worth retrying: its default Retry-After (seconds); None: not retryable
    message: str  # when the raiser has nothing more precise to say


CODES: dict[ErrorCode, Code] = {
    "bad_request": Code(400, None, "bad request"),
    "unauthorized": Code(401, None, "missing or wrong bearer token"),
    "forbidden": Code(403, None, "not allowed for this caller"),
    "not_found": Code(404, None, "no such job"),
    # (429: this host's queues or memory budget are full; the transports' own
    # overload refusals, before a request is read, are 503: sandboxd.api.httpserver.)
    "queue_full": Code(429, RETRY_AFTER, "the queue is full; retry later"),
    # (429: a tenant's rate, concurrency or daily CPU quota: sandboxd.jobs.tenants)
    "rate_limited": Code(429, RETRY_AFTER, "this tenant's limit is reached; retry later"),
    "cancelled": Code(409, None, "cancelled"),
    "conflict": Code(422, None, "an idempotency key was used for a different request; use a new key for this one"),
    "internal": Code(500, None, "internal error"),
    "draining": Code(503, RETRY_AFTER, "shutting down; retry on another host"),
    "queue_deadline": Code(504, None, "the job waited in its queue past its queue deadline"),
}
INTERNAL = CODES["internal"]
# A tenant's refusals keep their native status on the compat APIs too (which map the rest their own way).
TENANT_STATUS = {c: CODES[c].status for c in ("forbidden", "rate_limited")}
# (Looked up by any string: a code this version does not know is "internal".)
_BY_NAME: dict[str, Code] = {str(k): v for k, v in CODES.items()}


class ServiceError(Exception):
    """An error with a wire code; transports map it to a reply (and HTTP status)."""

    def __init__(self, err: Error) -> None:
        super().__init__(err.message)
        self.err = err


def make(code: ErrorCode, message: str = "", retry_after: float | None = None) -> Error:
    """An Error with the table's defaults for what is not given."""
    entry = _BY_NAME.get(code, INTERNAL)
    return Error(code, message or entry.message, entry.retry_after if retry_after is None else retry_after)


def error(code: ErrorCode, message: str = "", retry_after: float | None = None) -> ServiceError:
    return ServiceError(make(code, message, retry_after))


def bad_request(e: SchemaError | str) -> ServiceError:
    """A request the schema refused: the message names the field and the fix."""
    return error("bad_request", str(e))


def as_error(e: BaseException) -> Error | None:
    """The client's error for what an operation raised; None for anything else
    (a bug: the transport logs it and answers "internal")."""
    if isinstance(e, ServiceError):
        return e.err
    if isinstance(e, SchemaError):
        return make("bad_request", str(e))
    return None


def http_status(code: str) -> int:
    return _BY_NAME.get(code, INTERNAL).status


def retry_after_header(err: Error) -> dict[str, str] | None:
    """HTTP's Retry-After for an error that carries one (whole seconds, at least 1)."""
    return {"Retry-After": str(max(1, round(err.retry_after)))} if err.retry_after else None
