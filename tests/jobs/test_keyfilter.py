"""The job store's key filter (sandboxd.jobs.keyfilter) on a real SQLite file:
a new key costs no SELECT, a key any row holds is always found, across a
restart and across a rebuild that runs while more keys are queued."""

from __future__ import annotations

import asyncio
import sqlite3
import time
import uuid
from collections.abc import Iterable
from pathlib import Path

import pytest

from sandboxd.jobs import keyfilter
from sandboxd.jobs.keyfilter import KeyFilter
from sandboxd.jobs.store import JobStore, NewJob


def test_no_key_added_is_missed_and_few_others_pass() -> None:
    f = KeyFilter(bits_log2=16)
    added = [str(uuid.uuid4()) for _ in range(4096)]
    for k in added:
        f.add(k)
    assert all(f.may_hold(k) for k in added) and f.added == 4096
    # 2^12 keys in 2^16 bits, 3 probes: ~0.5% expected ((1 - e^(-3/16))^3).
    others = [str(uuid.uuid4()) for _ in range(20000)]
    assert sum(f.may_hold(k) for k in others) < 0.02 * len(others)
    assert not KeyFilter(bits_log2=16).may_hold(added[0]) and f.size() == 1 << 13


def recorded(s: JobStore, key: str) -> asyncio.Future[tuple[bool, object]]:
    fut: asyncio.Future[tuple[bool, object]] = asyncio.get_running_loop().create_future()
    job = NewJob(f"job-{key}", "run", b"", time.time(), key=key, fingerprint=b"fp")
    s.record(job, "done", b"info", time.time(), lambda ok, val: fut.set_result((ok, val)))
    return fut


async def record_all(s: JobStore, keys: Iterable[str]) -> None:
    """Keyed records queued at once (one batch), committed."""
    assert all(ok for ok, _ in await asyncio.gather(*(recorded(s, k) for k in keys)))


def open_store(tmp_path: Path, path: str) -> JobStore:
    return JobStore(tmp_path / "j.sqlite3" if path == "file" else ":memory:", 600)


async def rebuilt(s: JobStore, n: int) -> None:
    """Until the filter has been rebuilt n times and no scan runs (the file's is on a thread)."""
    for _ in range(200):
        if s.keys.rebuilds == n and s.keys.scan is None:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{s.keys.rebuilds} rebuilds, not {n}")


@pytest.fixture
def due_at_40(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(keyfilter, "REBUILD_AFTER", 40)


def slow_chunks(monkeypatch: pytest.MonkeyPatch, fail_at: int = 0) -> list[str | None]:
    """A scan of 3-key chunks, each 20 ms long (on the store's thread): keys queued
    right after a rebuild begins are queued while it scans.  fail_at: that call
    (counting from 1, the open's fill included) raises.  Returns each call's `after`."""
    real, calls = keyfilter.fill_chunk, []

    def chunk(db: sqlite3.Connection, keys: KeyFilter, after: str | None) -> str | None:
        calls.append(after)
        if len(calls) == fail_at:
            raise sqlite3.OperationalError("disk I/O error")
        last = real(db, keys, after)
        time.sleep(0.02)  # (after its read: the first chunk reads before anything queued meanwhile commits)
        return last

    monkeypatch.setattr(keyfilter, "SCAN_CHUNK", 3)
    monkeypatch.setattr(keyfilter, "fill_chunk", chunk)
    return calls


def test_a_new_key_costs_no_select_a_recorded_one_is_found_after_a_restart(tmp_path: Path) -> None:
    async def scenario() -> None:
        s = JobStore(tmp_path / "j.sqlite3", 600)
        ran: list[str] = []
        s.db.set_trace_callback(ran.append)
        assert s.by_key("never") is None and s.keys.skipped == 1 and ran == []
        assert await recorded(s, "k1") == (True, 1)
        assert await recorded(s, 'k"\\[') == (True, 1)  # (read back through the scan's JSON)
        ran.clear()
        got = s.by_key("k1")
        assert got is not None and got.id == "job-k1" and any("WHERE idem_key=" in sql for sql in ran)
        await s.close()
        # The filter of a store opened on the file starts with the keys its rows hold.
        again = JobStore(tmp_path / "j.sqlite3", 600)
        got = again.by_key("k1")
        assert got is not None and got.id == "job-k1" and again.keys.skipped == 0
        assert again.by_key('k"\\[') is not None and again.keys.filter.added == 2
        await again.close()

    asyncio.run(scenario())


@pytest.mark.parametrize("path", ["file", ":memory:"])
@pytest.mark.usefixtures("due_at_40")
def test_a_rebuild_keeps_every_live_key_and_those_queued_while_it_scans(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    slow_chunks(monkeypatch)  # (a scan of several chunks, the keys below queued while it runs)

    async def scenario() -> None:
        s = open_store(tmp_path, path)
        first = [f"a{i}" for i in range(39)]
        await record_all(s, first)
        assert s.keys.rebuilds == 0  # (39 keys: not yet)
        for k in first[:10]:  # tombstones: their keys freed, still in the old filter
            assert await s.forget(f"job-{k}")
        # The 40th key's batch ends quiet: the rebuild begins after it; more keys are
        # queued before the scan can have finished (on the file: in its thread).
        assert (await recorded(s, "a39"))[0]
        # (Keys before the scan's cursor in key order: only what was noted meanwhile has them.)
        during = asyncio.gather(*(recorded(s, f"0-{i}") for i in range(5)))
        await rebuilt(s, 1)
        assert all(ok for ok, _ in await during)
        live = [*first[10:], "a39", *(f"0-{i}" for i in range(5))]
        for k in live:
            got = s.by_key(k)
            assert got is not None and got.id == f"job-{k}", k
        # The new filter holds the keys the rows held at the scan plus those noted since
        # (a key committed before a chunk read it counts twice): not the 10 freed keys.
        assert len(live) <= s.keys.filter.added <= len(live) + 5
        await s.close()

    asyncio.run(scenario())


def test_a_durable_jobs_key_is_noted_when_its_row_is_queued() -> None:
    async def scenario() -> None:
        s = JobStore(":memory:", 600)
        fut: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        s.add(NewJob("j1", "run", b"spec", time.time(), key="dk", fingerprint=b"f"), lambda ok, v: fut.set_result(ok))
        assert await fut
        got = s.by_key("dk")
        assert got is not None and got.id == "j1"
        await s.close()

    asyncio.run(scenario())


@pytest.mark.usefixtures("due_at_40")
def test_a_rebuild_waits_until_nothing_is_queued(tmp_path: Path) -> None:
    """The batch that makes it due queues another key from its own callback: no scan
    begins until that key has committed too (else the scan could miss it)."""

    async def scenario() -> None:
        s = JobStore(tmp_path / "j.sqlite3", 600)
        late: list[asyncio.Future[tuple[bool, object]]] = []
        last: asyncio.Future[bool] = asyncio.get_running_loop().create_future()

        def then(ok: bool, _val: object) -> None:  # (in the batch's own settling, before the scan could begin)
            late.append(recorded(s, "x"))
            last.set_result(ok)

        job = NewJob("job-a39", "run", b"", time.time(), key="a39", fingerprint=b"fp")
        s.record(job, "done", b"info", time.time(), then)
        await record_all(s, (f"a{i}" for i in range(39)))
        assert await last and (await late[0])[0]
        await rebuilt(s, 1)
        got = s.by_key("x")
        assert got is not None and got.id == "job-x"
        await s.close()

    asyncio.run(scenario())


@pytest.mark.parametrize("path", ["file", ":memory:"])
@pytest.mark.usefixtures("due_at_40")
def test_a_store_of_many_live_keys_is_rescanned_once_per_as_many_new_keys(tmp_path: Path, path: str) -> None:
    """Not after every batch once the rows hold more live keys than REBUILD_AFTER."""

    async def scenario() -> None:
        s = open_store(tmp_path, path)
        await record_all(s, (f"a{i}" for i in range(60)))
        await rebuilt(s, 1)  # (60 keys in one batch: due at 40)
        for _ in range(10):  # batches that note no key: nothing is due
            await s.count()
        assert s.keys.rebuilds == 1
        # Due again after as many new keys as the scan found live (60), not after 40.
        await record_all(s, (f"b{i}" for i in range(45)))
        await s.count()
        assert s.keys.rebuilds == 1
        await record_all(s, (f"c{i}" for i in range(15)))
        await rebuilt(s, 2)
        assert all(s.by_key(k) is not None for k in ("a0", "b44", "c14"))
        await s.close()

    asyncio.run(scenario())


@pytest.mark.parametrize("path", ["file", ":memory:"])
@pytest.mark.usefixtures("due_at_40")
def test_a_failed_scan_keeps_the_old_filter_and_is_tried_again_later(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    """On the store's thread (a file) or inline (in memory)."""
    calls = slow_chunks(monkeypatch, fail_at=2)  # (1: the open's fill of an empty store)

    async def scenario() -> None:
        s = open_store(tmp_path, path)
        await record_all(s, (f"a{i}" for i in range(40)))
        for _ in range(100):
            if len(calls) >= 2 and s.keys.scan is None:
                break
            await asyncio.sleep(0.01)
        assert len(calls) == 2 and s.keys.rebuilds == 0 and s.keys._during is None
        assert all(s.by_key(f"a{i}") is not None for i in range(40))  # (the old filter: still every key)
        await s.count()
        assert len(calls) == 2  # (not after every batch: due again after as many keys)
        await record_all(s, (f"b{i}" for i in range(40)))
        await rebuilt(s, 1)
        assert all(s.by_key(k) is not None for k in ("a0", "b39"))
        await s.close()

    asyncio.run(scenario())


@pytest.mark.usefixtures("due_at_40")
def test_a_store_closing_during_a_scan_ends_it_after_the_chunk_in_flight(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = slow_chunks(monkeypatch)

    async def scenario() -> None:
        s = JobStore(tmp_path / "j.sqlite3", 600)
        await record_all(s, (f"a{i}" for i in range(40)))  # (14 chunks of 3 keys: ~0.3 s of scan)
        await asyncio.sleep(0.03)
        assert s.keys.scan is not None
        begun = len(calls)
        await s.close()
        assert len(calls) <= begun + 1 and s.keys.rebuilds == 0 and s.keys._during is None

    asyncio.run(scenario())
