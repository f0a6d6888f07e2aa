"""The job store's in-memory key filter (sandboxd.jobs.keyfilter) on a real SQLite
file: a fresh key costs no SELECT, a stored key is always found, keys written
while it is built are not lost, and a rebuild forgets expired keys."""

from __future__ import annotations

import asyncio
import secrets
import time
from pathlib import Path

import pytest
from test_jobstore import added, row

from sandboxd.jobs import keyfilter
from sandboxd.jobs.keyfilter import Bloom
from sandboxd.jobs.store import JobStore


def selects(s: JobStore) -> list[str]:
    """The statements the store's writer connection runs from now on (where by_key asks)."""
    seen: list[str] = []
    s.db.set_trace_callback(seen.append)
    return seen


async def built(s: JobStore, n: int = 1) -> None:
    for _ in range(2000):
        if s.keys.builds >= n:
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"the key filter was not built {n} times: {s.keys.builds}")


def test_a_bloom_filter_holds_every_key_added_and_few_others() -> None:
    f = Bloom()
    keys = [secrets.token_urlsafe(16) for _ in range(100_000)]
    for k in keys:
        f.add(k)
    assert all(k in f for k in keys)
    fresh = [secrets.token_urlsafe(16) for _ in range(100_000)]
    false = sum(k in f for k in fresh)
    # 100 k keys in 2^23 bits with 4 hashes: ~0.004% expected; 0.1% would mean a broken hash.
    assert false < 100, false


def test_a_fresh_key_costs_no_select_and_a_stored_one_is_found(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite3"

    async def first() -> None:  # an earlier daemon's rows: the filter is built from them
        s = JobStore(path, 600)
        assert await asyncio.gather(*(added(s, row(i, f"old-{i}", b"fp")) for i in range(10))) == [None] * 10
        await s.close()

    asyncio.run(first())

    async def scenario() -> None:
        s = JobStore(path, 600)
        s.recover(lambda st: b"")
        seen = selects(s)
        assert s.by_key("fresh-0") is None and len(seen) == 1  # not built yet: SQLite is asked
        s.index_keys()
        await built(s)
        seen.clear()
        assert all(s.by_key(f"fresh-{i}") is None for i in range(1, 200))
        assert seen == []  # none of 199 fresh keys reached SQLite
        for i in range(10):
            got = s.by_key(f"old-{i}")
            assert got is not None and got.id == f"job-{i}"
        assert len(seen) == 10
        # A key stored from now on is found too: it was set when its row was queued.
        assert await added(s, row(20, "new", b"fp")) is None
        got = s.by_key("new")
        assert got is not None and got.id == "job-20"
        await s.close()

    asyncio.run(scenario())


def test_keys_written_while_the_filter_is_built_are_not_lost(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(keyfilter, "CHUNK", 50)  # 41 batches, one per loop iteration

    async def scenario() -> None:
        s = JobStore(tmp_path / "j.sqlite3", 600)
        assert await asyncio.gather(*(added(s, row(i, f"k-{i}", b"fp")) for i in range(2000))) == [None] * 2000
        s.index_keys()
        late, i = [], 2000
        # One row per loop iteration until the build is done: the last ones land
        # in the batch of its last read or after it, where only the new filter
        # itself (keys added to it while it is built) can know them.
        while s.keys.builds == 0:
            late.append(added(s, row(i, f"k-{i}", b"fp")))
            i += 1
            await asyncio.sleep(0)
        assert len(late) >= 10 and await asyncio.gather(*late) == [None] * len(late)
        for k in range(i):
            got = s.by_key(f"k-{k}")
            assert got is not None and got.id == f"job-{k}", k
        await s.close()

    asyncio.run(scenario())


def test_a_failed_build_keeps_every_key_held_and_is_tried_again_later(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(keyfilter, "REBUILD_AFTER", 5)

    async def scenario() -> None:
        s = JobStore(tmp_path / "j.sqlite3", 600)
        s.index_keys()
        await built(s)
        real = keyfilter.KEYS_AFTER
        monkeypatch.setattr(keyfilter, "KEYS_AFTER", "SELECT no_such_column FROM jobs")
        assert await asyncio.gather(*(added(s, row(i, f"k-{i}", b"fp")) for i in range(5))) == [None] * 5
        for _ in range(20):  # (the failed read, then nothing more: no new build at every key)
            await asyncio.sleep(0)
        assert s.keys.builds == 1 and s.keys.added == 0
        assert await added(s, row(5, "k-5", b"fp")) is None
        assert s.keys.builds == 1 and s.keys.added == 1  # (not tried again at once)
        assert all(s.by_key(f"k-{i}") is not None for i in range(6))  # the old filter has them all
        monkeypatch.setattr(keyfilter, "KEYS_AFTER", real)
        assert await asyncio.gather(*(added(s, row(i, f"k-{i}", b"fp")) for i in range(6, 10))) == [None] * 4
        await built(s, 2)  # tried again after REBUILD_AFTER more keys
        assert all(s.by_key(f"k-{i}") is not None for i in range(10))
        await s.close()

    asyncio.run(scenario())


def test_a_rebuild_forgets_expired_keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(keyfilter, "REBUILD_AFTER", 20)

    async def scenario() -> None:
        s = JobStore(tmp_path / "j.sqlite3", 1.0)
        s.index_keys()
        await built(s)
        done = []
        for i in range(10):
            fut: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
            s.record(
                row(i, f"gone-{i}", b"fp"), "done", b"info", time.time() - 5, lambda ok, _v, f=fut: f.set_result(ok)
            )
            done.append(fut)
        assert all(await asyncio.gather(*done))
        assert all(s.keys.may_hold(f"gone-{i}") for i in range(10))
        # Finished 5 s ago, results_ttl 1 s: expired (keys freed), then deleted (2 x results_ttl).
        assert await s.sweep() == 20
        assert s.by_key("gone-0") is None
        # 10 more keys reach REBUILD_AFTER: the filter is read again, without the freed keys.
        assert await asyncio.gather(*(added(s, row(i, f"kept-{i}", b"fp")) for i in range(10, 20))) == [None] * 10
        await built(s, 2)
        assert not any(s.keys.may_hold(f"gone-{i}") for i in range(10))
        assert all(s.keys.may_hold(f"kept-{i}") for i in range(10, 20))
        assert s.keys.added == 0
        await s.close()

    asyncio.run(scenario())
