"""What a compatibility API (sandboxd.compat: Judge0, Piston) runs on: the Backend.

Both frontends implement it: a host daemon's Service and the fleet's
Coordinator.  It lives in the jobs layer, below the API and compat layers
that use it, so the core names no compat module: a compat job's spec is any
registered job kind's spec (sandboxd.jobs.kinds), which each API checks with
isinstance when it reads one back.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal, Protocol

import msgspec

from sandboxd.languages import Language
from sandboxd.schema import JobInfo


@dataclasses.dataclass
class Served:
    """A language as the compat APIs list it: its definition and detected version."""

    lang: Language
    version: str


@dataclasses.dataclass
class Load:
    queued: int  # compat jobs not yet finished (daemon) or waiting (fleet)
    limit: int  # Judge0's max_queue_size: the backend's queue bound
    workers: list[dict[str, Any]]  # Judge0's /workers rows


class Backend(Protocol):
    """Where compat jobs run and their records live: a host daemon's Service or
    the fleet's Coordinator.  Errors are ServiceError, as for native jobs."""

    async def check_callback(self, url: str) -> None: ...

    async def start_compat(self, spec: msgspec.Struct, job_id: str, *, idempotency_key: str | None = None) -> JobInfo:
        """Start a compat job under the id the API chose (a Judge0 token is a UUID);
        with an idempotency key already used for this spec: that job (its id)."""
        ...

    async def wait_job(self, job_id: str, timeout: float | None = None) -> JobInfo: ...

    async def compat_job(self, job_id: str) -> tuple[msgspec.Struct, JobInfo] | None:
        """The job's spec and state; None for an unknown, expired or native job."""
        ...

    async def forget_job(self, job_id: str) -> Literal["ok", "missing", "pending"]:
        """Drop a finished job's record now (Judge0's DELETE); "pending": not final, kept."""
        ...

    async def compat_languages(self) -> dict[str, Served]: ...

    async def compat_load(self) -> Load: ...
