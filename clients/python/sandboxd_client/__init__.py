"""Client for sandboxd.

    from sandboxd_client import Client
    with Client("unix:///run/sandboxd/sandboxd.sock") as c:
        r = c.run(RunRequest(cmd=["echo", "hi"]))
        s = c.submit(Submission(lang="python3", source=b"print(input())", tests=[TestCase(b"1", b"1")]))

`AsyncClient` is the same API with `await`.  Addresses: `unix:///path` or
`http://host:port` (with `token=` for a bearer token).
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

from .client import AsyncClient, Client, SandboxdError

__all__ = [
    "AsyncClient",
    "Checker",
    "Client",
    "FileIn",
    "Limits",
    "LimitsPatch",
    "Program",
    "RunRequest",
    "RunResult",
    "SandboxdError",
    "Submission",
    "SubmissionResult",
    "TestCase",
    "TestResult",
]
