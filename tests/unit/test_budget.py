"""The memory budget, the byte-bounded compile cache, admission tickets and the
drain rate behind Retry-After: pure logic, on a controlled clock (no boxes)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import uvloop

from sandboxd import config, schema
from sandboxd.bodyhold import BODY, copies, headroom, stored
from sandboxd.config.host import DEFAULT_CAP, DEFAULT_FLOOR, default_memory_budget
from sandboxd.engine.budget import (
    OVERHEAD,
    RESULT_COPIES,
    BudgetFull,
    ByteLRU,
    HeapTrim,
    MemoryBudget,
    ResultHold,
    nbytes,
)
from sandboxd.engine.scheduler import AdmissionQueue, QueueFull, Ticket
from sandboxd.rates import RETRY_MAX, RETRY_MIN, DrainRate, retry_after
from sandboxd.schema import Submission

MiB = 1 << 20


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_drain_rate_tracks_the_measured_rate_on_a_fake_clock() -> None:
    clock = Clock()
    d = DrainRate(tau=10.0, clock=clock)
    assert d.rate() == 0.0 and retry_after(100, d.rate()) == RETRY_MAX  # nothing measured yet
    for _ in range(600):  # 5 per second for 2 minutes
        clock.t += 0.2
        d.note()
    assert d.rate() == pytest.approx(5.0, rel=0.05)
    assert retry_after(100, d.rate()) == pytest.approx(20.0, rel=0.05)
    for _ in range(120):  # the queue slows to 1 per second: the estimate follows
        clock.t += 1.0
        d.note()
    assert d.rate() == pytest.approx(1.0, rel=0.1)
    assert retry_after(30, d.rate()) == pytest.approx(30.0, rel=0.1)
    clock.t += 300  # stalled: no completion for 5 minutes
    assert retry_after(30, d.rate()) == RETRY_MAX


def test_drain_rate_is_not_biased_low_at_start() -> None:
    # 10 per second for only 3 s (less than tau): a plain EWMA would say ~2.6/s.
    clock = Clock()
    d = DrainRate(tau=10.0, clock=clock)
    for _ in range(30):
        clock.t += 0.1
        d.note()
    assert d.rate() == pytest.approx(10.0, rel=0.15)


def test_retry_after_is_clamped() -> None:
    assert retry_after(1, 1000.0) == RETRY_MIN
    assert retry_after(10**6, 1.0) == RETRY_MAX
    assert retry_after(5, 0.0) == RETRY_MAX


def test_queue_full_retry_after_comes_from_the_drain_rate() -> None:
    async def main() -> None:
        clock = Clock()
        q = AdmissionQueue("t", capacity=1, max_depth=4)
        q.drained = DrainRate(clock=clock)
        for _ in range(200):  # measured: 2 runs per second
            clock.t += 0.5
            q.drained.note()
        t = Ticket()
        for _ in range(5):  # 1 takes the free slot, 4 will wait
            q.admit(t, 1)
        with pytest.raises(QueueFull) as e:
            q.admit(Ticket(), 1)
        assert e.value.retry_after == pytest.approx(4 / 2.0, rel=0.05)  # 4 ahead at 2/s
        t.close()
        assert q.promised == 0

    uvloop.run(main())


def test_admitted_jobs_runs_are_never_refused_for_depth() -> None:
    async def main() -> None:
        q = AdmissionQueue("t", capacity=1, max_depth=2)
        gate = asyncio.Event()

        async def run() -> None:
            async with q.slot():
                await gate.wait()

        t = Ticket()
        q.admit(t, 5)  # one job of 5 runs, promised while the queue had room
        with pytest.raises(QueueFull):
            q.admit(Ticket(), 1)  # the places are taken: the next job is refused up front
        tasks = [t.spawn(run()) for _ in range(5)]
        await asyncio.sleep(0.01)
        assert q.running == 1 and q.depth == 4 and q.promised == 0  # beyond max_depth, none refused
        with pytest.raises(QueueFull):
            async with q.slot():  # a run outside any admitted job is checked as before
                pass
        gate.set()
        await asyncio.gather(*tasks)
        t.close()
        assert q.running == 0 and q.depth == 0 and q.promised == 0

    uvloop.run(main())


def test_a_tickets_unused_places_are_returned() -> None:
    q = AdmissionQueue("t", capacity=1, max_depth=3)
    a, b = Ticket(), Ticket()
    q.admit(a, 3)
    q.admit(b, 1)
    assert q.promised == 4
    with pytest.raises(QueueFull):
        q.admit(Ticket(), 1)
    a.close()
    a.close()  # idempotent
    assert q.promised == 1
    q.admit(Ticket(), 1)


def test_budget_refuses_what_does_not_fit_with_a_clear_message() -> None:
    clock = Clock()
    b = MemoryBudget(100 * MiB, clock=clock)
    holds = [b.reserve("requests", 30 * MiB) for _ in range(3)]
    assert b.total == 90 * MiB and b.used["requests"] == 90 * MiB
    with pytest.raises(BudgetFull) as e:
        b.reserve("requests", 30 * MiB, "the run")
    assert isinstance(e.value, QueueFull)
    assert "memory budget is full" in str(e.value) and "the run" in str(e.value)
    assert e.value.retry_after == RETRY_MAX  # nothing has been freed yet: no rate measured
    for h in holds[:2]:  # 30 MiB freed per second
        clock.t += 1.0
        h.release()
        h.release()  # idempotent
    assert b.total == 30 * MiB
    b.reserve("requests", 60 * MiB)
    with pytest.raises(BudgetFull) as e:
        b.reserve("requests", 40 * MiB)  # 30 MiB short
    assert RETRY_MIN <= e.value.retry_after < 5
    assert b.snapshot() == {
        "limit": 100 * MiB,
        "room": 100 * MiB,  # (no headroom asked for)
        "used": 90 * MiB,
        "refused": 2,
        "holders": {"requests": 90 * MiB, "receiving": 0, "sessions": 0, "compile_cache": 0, "results": 0},
        "trims": 0,  # (no event loop running: no trim scheduled)
    }


def test_compile_cache_evicts_by_bytes_lru() -> None:
    b = MemoryBudget(40 * MiB)
    cache = ByteLRU[str, str](b, "compile_cache", 0.25)  # 10 MiB
    for k in "abc":
        assert cache.put(k, k, 3 * MiB)
    assert cache.get("a") == "a"  # a is now the most recent
    assert cache.put("d", "d", 3 * MiB)  # 12 MiB > 10: the least recent (b) goes
    assert cache.get("b") is None and [cache.get(k) for k in "acd"] == ["a", "c", "d"]
    assert cache.bytes == 9 * MiB == b.used["compile_cache"]
    assert not cache.put("huge", "x", 11 * MiB)  # larger than the cache: not kept
    assert cache.bytes == 9 * MiB and len(cache) == 3


def test_admission_reclaims_the_compile_cache_before_refusing() -> None:
    b = MemoryBudget(40 * MiB)
    cache = ByteLRU[str, str](b, "compile_cache", 0.25)
    for k in "abc":
        cache.put(k, k, 3 * MiB)
    b.reserve("requests", 35 * MiB)  # fits only once 4 MiB of cache are evicted
    assert cache.bytes == 3 * MiB and cache.get("c") == "c"
    assert b.total == 38 * MiB
    assert cache.put("d", "d", 3 * MiB)  # the budget is full: d replaces the cache's own c
    assert cache.get("c") is None and cache.bytes == 3 * MiB and b.total == 38 * MiB
    assert not cache.put("e", "e", 6 * MiB)  # 2 free + its 3 MiB are not enough: not cached
    with pytest.raises(BudgetFull):
        b.reserve("requests", 6 * MiB)  # likewise
    assert cache.get("d") == "d"  # and nothing was evicted in vain
    b.reserve("requests", 5 * MiB)  # just fits: the cache gives up d
    assert b.total == 40 * MiB and len(cache) == 0


def test_nbytes_counts_every_payload_of_a_submission() -> None:
    sub = Submission(
        lang="c", source=b"s" * 1000, tests=[schema.TestCase(input=b"i" * MiB, expected=b"e" * MiB) for _ in range(3)]
    )
    n = nbytes(sub)
    assert 6 * MiB + 1000 <= n < 6 * MiB + 1000 + 100 * OVERHEAD


def test_default_budget_is_a_quarter_of_memory_within_floor_and_cap(tmp_path: Path) -> None:
    def with_total(kib: int) -> int:
        p = tmp_path / "meminfo"
        p.write_text(f"MemTotal:       {kib} kB\nMemFree:  1 kB\n")
        return default_memory_budget(str(p))

    assert with_total(16 << 20) == 4 << 30  # 16 GiB host: 4 GiB
    assert with_total(512 << 10) == DEFAULT_FLOOR  # 512 MiB host
    assert with_total(1 << 30) == DEFAULT_CAP  # 1 TiB host
    assert default_memory_budget(str(tmp_path / "missing")) == DEFAULT_FLOOR


def test_a_budget_below_max_body_with_its_copies_stops_start_up_naming_the_key(tmp_path: Path) -> None:
    with pytest.raises(config.ConfigError, match="memory_budget"):
        config.load(None, env={"SANDBOXD_MEMORY_BUDGET": str(MiB)}, default_path=tmp_path / "none.toml")
    # 2 x max_body (64 MiB) was enough on lead; a maximal body and its decoded copies are not.
    with pytest.raises(config.ConfigError, match=r"2\.5 x http\.max_body"):
        config.load(None, env={"SANDBOXD_MEMORY_BUDGET": str(128 * MiB)}, default_path=tmp_path / "none.toml")
    cfg = config.load(None, env={"SANDBOXD_MEMORY_BUDGET": str(160 * MiB)}, default_path=tmp_path / "none.toml")
    assert cfg.engine.memory_budget == 160 * MiB


def test_a_body_holds_its_copies_until_its_spec_is_stored() -> None:
    assert (copies(8 * MiB, msgpack=True), copies(8 * MiB, msgpack=False)) == (16 * MiB, 20 * MiB)


def test_a_jobs_admission_takes_its_share_of_its_bodys_hold() -> None:
    # The transport reserved the body with its copies (holder "receiving")
    # before reading it; its job's reservation is credited with its share (not
    # counted beside it), the rest held until the job's spec is stored.
    b = MemoryBudget(20 * MiB)
    body = b.reserve("receiving", copies(8 * MiB, msgpack=True), "the request body")
    token = BODY.set(body)
    try:
        job = b.admit_request(7 * MiB, "the run")
        assert b.used == {"requests": 7 * MiB, "receiving": 9 * MiB, "sessions": 0, "compile_cache": 0, "results": 0}
        assert body.n == 9 * MiB
        stored()  # (the spec in the job store: the body's other copies are gone)
        assert body.n == 0 and b.total == 7 * MiB
        body.release()  # (the transport's own release, after its handler: a no-op now)
        assert b.total == 7 * MiB
        # A second job of the same body (a batch) is not credited again: 7 + 14 > 20.
        with pytest.raises(BudgetFull):
            b.admit_request(14 * MiB, "the run")
        # Refused: the body's hold stays as it was.
        body2 = b.reserve("receiving", 12 * MiB, "the request body")
        BODY.set(body2)
        with pytest.raises(BudgetFull):
            b.admit_request(14 * MiB, "the run")
        assert body2.n == 12 * MiB and b.used["receiving"] == 12 * MiB and b.total == 19 * MiB
        body2.release()
        job.release()
        assert b.total == 0
    finally:
        BODY.reset(token)


def test_another_budgets_body_hold_is_not_credited() -> None:
    mine, other = MemoryBudget(10 * MiB), MemoryBudget(10 * MiB)
    token = BODY.set(other.reserve("receiving", 8 * MiB, "the request body"))
    try:
        mine.reserve("requests", 4 * MiB)
        with pytest.raises(BudgetFull):
            mine.admit_request(7 * MiB, "the run")
        assert other.total == 8 * MiB
    finally:
        BODY.reset(token)


def test_a_result_hold_reads_a_file_only_if_it_fits_and_settles_the_rest_once() -> None:
    b = MemoryBudget(10 * MiB)
    r = ResultHold(b)
    assert r.room(6 * MiB) is None and b.used["results"] == 6 * MiB * RESULT_COPIES
    why = r.room(6 * MiB)
    assert why is not None and why.startswith("not read: ") and "memory budget is full" in why
    r.settle(b"x" * (6 * MiB))  # (the result: its file already counted, no more forced)
    assert r.size == nbytes(b"x" * (6 * MiB)) and b.used["results"] == r.size * RESULT_COPIES
    r.release()
    r.release()  # (idempotent)
    assert b.total == 0 and b.refused == 1


def test_the_heap_is_trimmed_once_enough_was_reserved_or_given_back() -> None:
    # lead3: glibc kept what large bodies freed (20-45 MiB per load, uncounted)
    async def main() -> tuple[int, int, int]:
        t = HeapTrim(every=10 * MiB, delay=0)
        assert t.fn is not None  # (glibc: the daemon's C library here)
        t.note(6 * MiB)
        await asyncio.sleep(0.05)
        before = t.trims
        t.note(6 * MiB)  # crosses it: one trim, on a thread
        t.note(20 * MiB)  # (one at a time: counted, not scheduled again)
        for _ in range(200):
            if t.trims:
                break
            await asyncio.sleep(0.01)
        return before, t.trims, t.owed

    before, trims, owed = uvloop.run(main())
    assert (before, trims) == (0, 1)
    assert owed == 0


def test_a_budget_trims_after_large_releases() -> None:
    async def main() -> int:
        b = MemoryBudget(100 * MiB)
        b.trim.delay = 0
        b.reserve("requests", 30 * MiB).release()
        for _ in range(200):
            if b.trim.trims:
                break
            await asyncio.sleep(0.01)
        return int(b.snapshot()["trims"])

    assert uvloop.run(main()) >= 1


def test_a_budgets_headroom_is_left_to_the_daemon() -> None:
    # lead3: holders could take the whole limit, and the daemon's RSS grew
    # 10-15 MiB past their count under hostile_load's stdin (262 MiB over
    # idle against 256).
    limit, need = 256 * MiB, 160 * MiB  # (2.5 x the default max_body)
    assert headroom(limit, need) == 32 * MiB and headroom(8 << 30, need) == 64 * MiB  # (a share, capped)
    assert headroom(170 * MiB, need) == 10 * MiB and headroom(need, need) == 0  # (a maximal body still fits)
    b = MemoryBudget(limit)
    b.keep(headroom(limit, need))
    held = [b.reserve("receiving", 80 * MiB) for _ in range(2)]
    b.reserve("requests", 40 * MiB)  # 200 MiB
    with pytest.raises(BudgetFull) as e:
        b.reserve("receiving", 40 * MiB)  # 240 > the holders' 224
    assert "kept for the daemon itself" in str(e.value)
    held[0].release()
    b.reserve("receiving", 40 * MiB)
    assert b.snapshot()["room"] == 224 * MiB
