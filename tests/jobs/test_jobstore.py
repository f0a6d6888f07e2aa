"""The job store on a real SQLite file: group commit, keys, recovery, expiry."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

import pytest
from box_fixtures import SyncEngine

from sandboxd.errors import ServiceError
from sandboxd.jobs.service import Service
from sandboxd.jobs.store import EVICTED, EXPIRED, INLINE_BYTES, JobIdInUse, JobStore, NewJob, Stored, StoreFull
from sandboxd.schema import RunRequest


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


def test_a_finish_enters_one_finished_index_and_old_files_lose_the_other(tmp_path: Path) -> None:
    """Issue 18: a finished row is in jobs_results (size > 0) or jobs_tombstones
    (size = 0), never in both: a finish writes one index entry (on c50a363
    jobs_finished took a second, a WAL page per run).  A file made before has
    its jobs_finished dropped at open, and sweeps then run on the new indexes."""
    path = tmp_path / "j.sqlite3"
    asyncio.run(JobStore(path, 10).close())
    db = sqlite3.connect(path)
    db.execute("CREATE INDEX jobs_finished ON jobs(finished_at) WHERE finished_at IS NOT NULL")
    db.close()

    async def scenario() -> None:
        s = JobStore(path, 10)
        names = {r[1] for r in s.db.execute("PRAGMA index_list(jobs)")}
        assert "jobs_finished" not in names and {"jobs_results", "jobs_tombstones"} <= names, names
        await added(s, row(1))
        s.finish("job-1", "done", b"info", 1000.0)
        await s.count()  # (the finish committed)

        def entries(index: str) -> int:  # (the index's own cells, from SQLite's dbstat table)
            q = "SELECT coalesce(sum(ncell), 0) FROM dbstat WHERE name=? AND pagetype='leaf'"
            return int(s.db.execute(q, (index,)).fetchone()[0])

        assert entries("jobs_results") == 1 and entries("jobs_tombstones") == 0
        assert await s.sweep(now=1011.0) == 1  # expired: a tombstone...
        assert entries("jobs_results") == 0 and entries("jobs_tombstones") == 1
        assert await s.sweep(now=1021.0) == 1  # ...then deleted
        assert entries("jobs_tombstones") == 0 and await s.get("job-1") is None
        await s.close()

    asyncio.run(scenario())


# --- bounded in bytes (issue 13: [jobs] store_max_bytes) ----------------------------


def big(i: int, n: int) -> NewJob:
    return NewJob(f"job-{i}", "run", b"s" * n, time.time())


def test_past_max_bytes_the_oldest_results_are_evicted_and_counted(tmp_path: Path) -> None:
    async def scenario() -> None:
        s = JobStore(tmp_path / "j.sqlite3", 600, max_bytes=10_000)
        for i in (1, 2, 3):
            await added(s, big(i, 3000))
            done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            s.finish(f"job-{i}", "done", b"r" * 1000, 1000.0 + i, lambda ok, v, d=done: d.set_result(None))
            await done
        await s.count()  # (the eviction the third result caused has run)
        assert s.usage.evicted == 1 and s.usage.used == 8000 <= s.usage.limit
        one, two = await s.get("job-1"), await s.get("job-2")
        assert one is not None and one.state == EVICTED and one.info is None
        assert two is not None and two.info == b"r" * 1000  # the newer results stay whole
        assert (await s.count())[EVICTED] == 1
        await s.close()
        again = JobStore(tmp_path / "j.sqlite3", 600, max_bytes=10_000)  # the count is the rows' own
        assert again.usage.used == 8000
        await again.close()

    asyncio.run(scenario())


def test_unfinished_jobs_are_never_evicted_new_ones_are_refused(tmp_path: Path) -> None:
    async def scenario() -> None:
        s = JobStore(tmp_path / "j.sqlite3", 600, max_bytes=10_000)
        await added(s, big(1, 4000))
        await added(s, big(2, 4000))
        s.check_room(2000)  # fits
        with pytest.raises(StoreFull, match=r"jobs\.store_max_bytes 10000") as e:
            s.check_room(4000)
        assert 1.0 <= e.value.retry_after <= 60.0 and s.usage.refused == 1
        # An accepted job's result is written even past the limit (nothing accepted is lost)...
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        s.finish("job-1", "done", b"r" * 5000, 1000.0, lambda ok, v: done.set_result(None))
        await done
        await s.count()
        # ...and, being the only result, is what gets evicted; the unfinished job-2 is kept.
        two = await s.get("job-2")
        assert two is not None and two.state == "accepted" and s.usage.open == 4000
        assert s.usage.used <= s.usage.limit
        await s.close()

    asyncio.run(scenario())


def test_large_rows_commit_on_the_writer_thread_small_ones_inline(tmp_path: Path) -> None:
    async def scenario() -> None:
        s = JobStore(tmp_path / "j.sqlite3", 600)
        await added(s, row(1))
        assert s.threaded == 0
        await added(s, big(2, INLINE_BYTES))
        assert s.threaded == 1 and s.batches == 2
        got = s.by_key("none")  # reads meanwhile use their own connection
        assert got is None
        await s.close()
        again = JobStore(tmp_path / "j.sqlite3", 600)
        jobs, _ = again.recover(lambda st: b"")
        assert [len(j.spec or b"") for j in jobs] == [4, INLINE_BYTES]
        await again.close()

    asyncio.run(scenario())


def test_a_file_from_before_specs_had_their_own_table_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite3"
    old = sqlite3.connect(path)
    old.executescript(
        "CREATE TABLE jobs (seq INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, kind TEXT NOT NULL, spec BLOB,"
        " callback_url TEXT, idem_key TEXT, fingerprint BLOB, state TEXT NOT NULL,"
        " restarts INTEGER NOT NULL DEFAULT 0, created_at REAL NOT NULL, finished_at REAL, info BLOB);"
        "INSERT INTO jobs (id, kind, spec, state, created_at) VALUES ('a', 'run', x'0102', 'accepted', 1.0);"
        "INSERT INTO jobs (id, kind, spec, state, created_at, finished_at, info)"
        " VALUES ('b', 'compat', x'030405', 'done', 1.0, 2.0, x'06');"
    )
    old.commit()
    old.close()
    s = JobStore(path, 1e9)
    assert (s.usage.open, s.usage.done) == (2, 4)
    jobs, _ = s.recover(lambda st: b"")
    assert [(j.id, j.spec) for j in jobs] == [("a", b"\x01\x02")]

    async def check() -> None:
        b = await s.get("b")
        assert b is not None and b.spec == b"\x03\x04\x05" and b.info == b"\x06"
        await s.close()

    asyncio.run(check())


def test_a_file_from_before_results_had_their_own_table_is_migrated(tmp_path: Path) -> None:
    # lead2's schema: specs in `specs`, results in jobs.info (user_version 0).
    path = tmp_path / "j.sqlite3"
    s = JobStore(path, 1e9)
    asyncio.run(s.close())
    old = sqlite3.connect(path)
    old.executescript(
        "PRAGMA user_version=0; DROP TABLE results;"
        "INSERT INTO jobs (seq, id, kind, state, created_at, finished_at, info, size, idem_key)"
        " VALUES (7, 'b', 'run', 'done', 1.0, 2.0, x'0607', 4, 'k');"
        "INSERT INTO specs (seq, spec) VALUES (7, x'0102');"
    )
    old.commit()
    old.close()
    s = JobStore(path, 1e9)
    assert s.db.execute("SELECT count(*) FROM jobs WHERE info IS NOT NULL").fetchone() == (0,)
    assert s.db.execute("PRAGMA user_version").fetchone() == (1,)

    async def check() -> None:
        b = await s.get("b")
        assert b is not None and b.state == "done" and b.info == b"\x06\x07"
        k = s.by_key("k")
        assert k is not None and k.id == "b" and k.info == b"\x06\x07"
        assert await s.forget("b")  # a tombstone: its result row goes with it
        assert s.db.execute("SELECT count(*) FROM results").fetchone() == (0,)
        gone = await s.get("b")
        assert gone is not None and gone.state == EXPIRED and gone.info is None
        await s.close()

    asyncio.run(check())


def test_a_full_store_refuses_new_jobs_with_queue_full_and_retry_after(engine: SyncEngine, tmp_path: Path) -> None:
    """Through a real Service: jobs accepted while they fit, then 429-style refusals
    (nothing accepted is dropped), and the store's bytes in /v1/status and /metrics."""

    async def scenario() -> None:
        svc = Service(engine.engine, store=JobStore(tmp_path / "j.sqlite3", 600, max_bytes=64 << 10))
        try:
            slow = RunRequest(cmd=["sleep", "30"], stdin=b"x" * (40 << 10))
            first = await svc.start_run(slow)
            with pytest.raises(ServiceError) as e:
                await svc.start_run(slow)
            assert e.value.err.code == "queue_full" and "jobs.store_max_bytes" in e.value.err.message
            assert e.value.err.retry_after is not None and e.value.err.retry_after >= 1.0
            small = await svc.start_run(RunRequest(cmd=["true"]))  # what still fits is taken
            assert (await svc.wait_job(small.job)).state == "done"
            status = svc.status()["job_store"]
            assert status["limit"] == 64 << 10 and status["refused"] == 1 and status["unfinished"] >= 40 << 10
            assert b"sandboxd_job_store_bytes" in await svc.metrics_text()
            await svc.cancel_job(first.job)
            assert (await svc.wait_job(first.job)).state == "cancelled"
        finally:
            await svc.close()

    engine.call(scenario())


def test_a_waited_jobs_record_is_one_final_row(tmp_path: Path) -> None:
    """JobStore.record (sandboxd.jobs.accept's waited jobs): inserted final, no
    spec, its key found by by_key, its bytes counted as a result; nothing of
    it for recover; a key taken meanwhile fails it and counts nothing."""

    async def scenario() -> None:
        s = JobStore(tmp_path / "j.sqlite3", 600)

        def recorded(r: NewJob, info: bytes) -> asyncio.Future[tuple[bool, object]]:
            fut: asyncio.Future[tuple[bool, object]] = asyncio.get_running_loop().create_future()
            s.record(r, "done", info, time.time(), lambda ok, val: fut.set_result((ok, val)))
            return fut

        ok, _ = await recorded(NewJob("w-1", "run", b"", time.time(), key="k", fingerprint=b"fp"), b"i" * 100)
        assert ok and s.usage.done == 100 and s.usage.open == 0
        got = s.by_key("k")
        assert got is not None and got.id == "w-1" and got.state == "done" and got.info == b"i" * 100
        assert s.db.execute("SELECT count(*) FROM specs").fetchone()[0] == 0
        ok, err = await recorded(NewJob("w-2", "run", b"", time.time(), key="k", fingerprint=b"fp"), b"j" * 50)
        assert not ok and isinstance(err, sqlite3.IntegrityError) and s.usage.done == 100
        await s.close()
        again = JobStore(tmp_path / "j.sqlite3", 600)
        assert again.recover(lambda st: b"") == ([], []) and again.usage.done == 100
        await again.close()

    asyncio.run(scenario())
