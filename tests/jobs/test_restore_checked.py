"""A restored job's spec passes the same checks as at acceptance (KINDS.decode:
its runs are not validated again, Engine.run(checked=True)); one that fails
them fails, the others run."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from box_fixtures import SyncEngine
from test_jobstore import added

from sandboxd.jobs.service import Service
from sandboxd.jobs.store import JobStore, NewJob
from sandboxd.jobs.table import encode_spec
from sandboxd.schema import RunRequest


def test_a_restored_spec_that_fails_the_checks_fails_and_the_rest_run(engine: SyncEngine, tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite3"
    # An earlier daemon acknowledged these and died: a NUL in argv (which no
    # check of this version lets into a box) and a plain run.
    bad = encode_spec(RunRequest(cmd=["sh", "-c", "echo a\0b"]))
    good = encode_spec(RunRequest(cmd=["sh", "-c", "echo ran"]))

    async def earlier() -> None:
        s = JobStore(path, 600)
        assert await added(s, NewJob("bad-1", "run", bad, time.time())) is None
        assert await added(s, NewJob("good-1", "run", good, time.time())) is None
        await s.close()

    asyncio.run(earlier())

    async def scenario() -> None:
        svc = Service(engine.engine, store=JobStore(path, 600))
        try:
            svc.open()
            failed = await svc.wait_job("bad-1", 30)
            assert failed.state == "failed" and failed.error is not None, failed
            assert "could not be read back" in failed.error.message
            ran = await svc.wait_job("good-1", 30)
            assert ran.state == "done" and ran.result is not None and ran.result.stdout == b"ran\n", ran
        finally:
            await svc.close()

    engine.call(scenario())
