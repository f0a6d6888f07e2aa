"""Tenants' pure parts: the token bucket, the quota's UTC day, fair queuing's order."""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter

import pytest

from sandboxd.engine.fairshare import FairQueue
from sandboxd.engine.scheduler import AdmissionQueue, Ticket
from sandboxd.tenancy import DAY, hash_key, new_key, until_midnight, utc_day
from sandboxd.tenancy import TokenBucket as Bucket


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_bucket_allows_a_burst_then_refills_at_its_rate() -> None:
    c = Clock()
    b = Bucket(rate=2.0, burst=3, clock=c)
    assert [b.take() for _ in range(3)] == [0.0, 0.0, 0.0]
    assert b.take() == pytest.approx(0.5)  # one token at 2/s
    assert b.remaining == 0 and b.reset() == pytest.approx(1.5)
    c.t += 0.5
    assert b.take() == 0.0
    c.t += 100
    assert b.remaining == 3  # never above the burst


def test_quota_day_is_the_utc_day_and_resets_at_midnight() -> None:
    midnight = 20000 * DAY
    assert utc_day(midnight - 1) == 19999 and utc_day(midnight) == 20000
    assert until_midnight(midnight - 10) == pytest.approx(10)
    assert until_midnight(midnight) == pytest.approx(DAY)


def test_keys_are_random_and_stored_as_sha256() -> None:
    a, b = new_key(), new_key()
    assert a != b and len(a) > 30
    assert len(hash_key(a)) == 64 and a not in hash_key(a)


def _serve(
    fq: FairQueue[tuple[float, int]], n: int, cost: dict[str, float], weight: dict[str, float] | None = None
) -> Counter[str]:
    """n picks from a always-backlogged queue; each run charged its tenant's cost."""
    got = Counter[str]()
    seq = itertools.count()
    for _ in range(n):
        picked = fq.pop()
        assert picked is not None
        name, _w = picked
        got[name] += 1
        fq.charge(name, cost[name])
        fq.push(name, (weight or {"a": 1.0, "b": 3.0})[name], (0.0, next(seq)))
    return got


def test_wfq_gives_box_time_in_proportion_to_weight() -> None:
    fq = FairQueue[tuple[float, int]]()
    seq = itertools.count()
    for _ in range(50):  # a floods (10x), b sends few, both always backlogged
        fq.push("a", 1.0, (0.0, next(seq)))
    for _ in range(5):
        fq.push("b", 3.0, (0.0, next(seq)))
    got = _serve(fq, 400, {"a": 1.0, "b": 1.0})
    assert got["b"] / 400 == pytest.approx(0.75, abs=0.02)
    # Unequal run costs: shares of box-seconds, not of runs, follow the weights.
    fq2 = FairQueue[tuple[float, int]]()
    fq2.push("a", 1.0, (0.0, 0))
    fq2.push("b", 3.0, (0.0, 1))
    got = _serve(fq2, 800, {"a": 0.5, "b": 2.0})
    box_a, box_b = got["a"] * 0.5, got["b"] * 2.0
    assert box_b / (box_a + box_b) == pytest.approx(0.75, abs=0.03)


def test_wfq_priority_orders_within_a_tenant_only() -> None:
    fq = FairQueue[tuple[float, int]]()
    fq.push("a", 1.0, (-5.0, 0))  # a's high priority (smaller key)
    fq.push("a", 1.0, (0.0, 1))
    fq.push("b", 1.0, (9.0, 2))  # b's lowest
    first = [fq.pop() for _ in range(3)]
    assert [p[0] for p in first if p] in (["a", "b", "a"], ["b", "a", "a"])
    order_a = [p[1] for p in first if p and p[0] == "a"]
    assert order_a == [(-5.0, 0), (0.0, 1)]


def test_an_idle_tenant_banks_no_credit() -> None:
    fq = FairQueue[tuple[float, int]]()
    fq.push("a", 1.0, (0.0, 0))
    for i in range(100):  # a alone for a long time
        p = fq.pop()
        assert p is not None
        fq.charge("a", 1.0)
        fq.push("a", 1.0, (0.0, i + 1))
    fq.push("b", 1.0, (0.0, 999))
    for i in range(200, 210):
        fq.push("b", 1.0, (0.0, i))
    got = _serve(fq, 20, {"a": 1.0, "b": 1.0}, {"a": 1.0, "b": 1.0})
    assert 8 <= got["b"] <= 12  # a fair half from its arrival, not 20 of 20 to catch up


async def _flood(q: AdmissionQueue, tickets: dict[str, Ticket], jobs: dict[str, int]) -> list[str]:
    order: list[str] = []

    async def run(name: str) -> None:
        t0 = await q.acquire()
        order.append(name)
        await asyncio.sleep(0)
        q.release(t0)

    tasks = []
    for name, n in jobs.items():
        for _ in range(n):
            tasks.append(tickets[name].spawn(run(name)))
    await asyncio.gather(*tasks)
    return order


def test_the_scheduler_interleaves_tenants_by_weight() -> None:
    """The AdmissionQueue (one box) serves two tenants' waiters by weight,
    not in arrival order: the flood of a does not hold b back."""
    q = AdmissionQueue("t", capacity=1, max_depth=10_000)
    tickets = {"a": Ticket("a", 1.0), "b": Ticket("b", 1.0)}
    order = asyncio.run(_flood(q, tickets, {"a": 100, "b": 10}))
    # In arrival order b would come last (after a's 100); fair: b done within the first ~25.
    last_b = max(i for i, n in enumerate(order) if n == "b")
    assert last_b < 30, order
