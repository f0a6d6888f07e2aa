"""The Judge0 API's operations on a Backend: its languages, validation, and
submissions as the backend's jobs (a token is the job's id)."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

from sandboxd.compat import Backend, Served
from sandboxd.compat.judge0 import catalog, statistics, validate
from sandboxd.compat.judge0.request import Request
from sandboxd.compat.judge0.status import outcome
from sandboxd.schema import JobInfo


class Judge0:
    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.stats = statistics.of(backend)

    # --- languages ---

    async def languages(self) -> dict[int, Served]:
        return await catalog.served(self.backend)

    @staticmethod
    def language_name(jid: int, version: str) -> str:
        return catalog.language_name(jid, version)

    def language_detail(self, jid: int, s: Served) -> dict[str, Any]:
        return catalog.language_detail(jid, s)

    # --- validation: Judge0's model, message for message ---

    async def build(self, params: Mapping[str, Any], b64: bool) -> Request | dict[str, list[str]]:
        return await validate.build(self.backend, params, b64)

    # --- records: the backend's jobs ---

    async def create(self, req: Request, idempotency_key: str | None = None) -> str:
        """The new submission's token; with a key already used for this request, that one's."""
        job_id = str(uuid.uuid4())
        info = await self.backend.start_compat(req, job_id, idempotency_key=idempotency_key)
        if info.job == job_id:  # (not a repeat answered with the first one's token)
            self.stats.created(req)
        return info.job

    async def get(self, token: str) -> tuple[Request, JobInfo] | None:
        found = await self.backend.compat_job(token)
        if found is None or not isinstance(found[0], Request):
            return None
        o = outcome(found[0], found[1])
        if not o.pending:
            self.stats.finished(token, o.status_id)
        return found[0], found[1]
