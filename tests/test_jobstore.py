"""The job store on a real SQLite file: group commit, keys, recovery, expiry."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from sandboxd.jobs.store import EXPIRED, JobIdInUse, JobStore, NewJob, Stored


def added(s: JobStore, r: NewJob) -> asyncio.Future[Stored | None]:
    """store.add as an awaitable: None once committed, the Stored job holding its key."""
    fut: asyncio.Future[Stored | None] = asyncio.get_running_loop().create_future()
    s.add(r, lambda ok, val: fut.set_result(val) if ok else fut.set_exception(val))
    return fut


def row(i: int, key: str | None = None, fp: bytes | None = None) -> NewJob:
    return NewJob(f"job-{i}", "run", b"spec", time.time(), key=key, fingerprint=fp)


def test_group_commit_batches_what_one_loop_iteration_queues(tmp_path: Path) -> None:
    async def scenario() -> None:
        s = JobStore(tmp_path / "j.sqlite3", 600)
        # 500 acknowledgements waiting at once: one or two transactions, not 500.
        assert await asyncio.gather(*(added(s, row(i)) for i in range(500))) == [None] * 500
        assert s.ops == 500 and s.batches <= 2
        assert (await s.count()) == {"accepted": 500}
        await s.close()

    asyncio.run(scenario())
    # Committed means on disk: another connection (another process, after a crash) reads it.
    again = JobStore(tmp_path / "j.sqlite3", 600)
    jobs, lost = again.recover(lambda s: b"")
    assert [j.id for j in jobs] == [f"job-{i}" for i in range(500)] and lost == []
    asyncio.run(again.close())


def test_keys_and_ids_are_unique(tmp_path: Path) -> None:
    async def scenario() -> None:
        s = JobStore(tmp_path / "j.sqlite3", 600)
        assert await added(s, row(1, "k", b"fp1")) is None
        held = await added(s, row(2, "k", b"fp2"))  # the key names job-1: nothing inserted
        assert held is not None and held.id == "job-1" and held.fingerprint == b"fp1"
        assert await s.get("job-2") is None
        with pytest.raises(JobIdInUse):
            await added(s, row(1))
        # A failing operation does not spoil the others of its batch.
        results = await asyncio.gather(added(s, row(1)), added(s, row(3)), return_exceptions=True)
        assert isinstance(results[0], JobIdInUse) and results[1] is None
        await s.close()

    asyncio.run(scenario())


def test_recovery_reruns_once_then_says_lost_and_a_clean_stop_does_not_count(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite3"

    async def add(*rows: NewJob) -> None:
        s = JobStore(path, 600)
        for r in rows:
            await added(s, r)
        await s.close()

    asyncio.run(add(row(1), row(2)))
    s = JobStore(path, 600)
    again, lost = s.recover(lambda st: b"lost-info")  # the first daemon died
    assert [j.id for j in again] == ["job-1", "job-2"] and lost == []

    async def release() -> None:
        s.release("job-2")  # job-2 was kept by a clean stop
        await s.close()

    asyncio.run(release())
    s = JobStore(path, 600)
    again, lost = s.recover(lambda st: b"lost-info")  # the second daemon died with job-1 again
    assert [j.id for j in again] == ["job-2"] and lost == ["job-1"]

    async def check() -> None:
        got = await s.get("job-1")
        assert got is not None and got.state == "lost" and got.info == b"lost-info"
        await s.close()

    asyncio.run(check())


def test_sweep_leaves_a_tombstone_then_deletes(tmp_path: Path) -> None:
    async def scenario() -> None:
        s = JobStore(tmp_path / "j.sqlite3", 10)
        await added(s, row(1, "k", b"fp"))
        s.finish("job-1", "done", b"info", 1000.0)
        assert await s.sweep(now=1005.0) == 0
        assert await s.sweep(now=1011.0) == 1
        got = await s.get("job-1")
        assert got is not None and got.state == EXPIRED and got.spec is None and got.info is None
        assert await added(s, row(2, "k", b"other")) is None  # its key is free again
        assert await s.sweep(now=1021.0) == 1
        assert await s.get("job-1") is None
        await s.close()

    asyncio.run(scenario())
