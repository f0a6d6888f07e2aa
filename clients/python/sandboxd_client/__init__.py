"""Client for sandboxd.

    from sandboxd_client import Client
    with Client("unix:///run/sandboxd/sandboxd.sock") as c:
        r = c.run(RunRequest(cmd=["echo", "hi"]))
        s = c.submit(Submission(lang="python3", source=b"print(input())", tests=[TestCase(b"1", b"1")]))

`AsyncClient` is the same API with `await`.  Addresses: `unix:///path` or
`http://host:port` (with `token=` for a bearer token).

Calls that start a job send an idempotency key (a fresh uuid4 hex, or
`idempotency_key="..."`), and every call is retried with the same key on
HTTP 503 / `draining` and on a refused or dropped connection, with bounded
exponential backoff honouring Retry-After, for at most `Retry.deadline`
seconds: a call spanning a daemon restart completes, and its job runs once.
`Client(address, retry=Retry(deadline=0))` turns retries off.

`LiveSession.open(address, SessionStart(...))` (asyncio, HTTP addresses) is a
live session: stdin in, output out as it happens (docs/sessions.md).
"""

from sandboxd.schema import (
    Checker,
    FileIn,
    Limits,
    LimitsPatch,
    Program,
    RunRequest,
    RunResult,
    Submission,
    SubmissionResult,
    TestCase,
    TestResult,
)
from sandboxd.sessionschema import SessionStart

from .client import AsyncClient, Client, SandboxdError
from .retry import Retry
from .session import LiveSession, SessionEnd

__all__ = [
    "AsyncClient",
    "Checker",
    "Client",
    "FileIn",
    "Limits",
    "LimitsPatch",
    "LiveSession",
    "Program",
    "Retry",
    "RunRequest",
    "RunResult",
    "SandboxdError",
    "SessionEnd",
    "SessionStart",
    "Submission",
    "SubmissionResult",
    "TestCase",
    "TestResult",
]
