"""The admission queue: priority order, FIFO, aging, bounded depth, deadlines, cancellation."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Iterator
from typing import Any

import pytest
import uvloop
from hypothesis import given, settings
from hypothesis import strategies as st

from sandboxd.engine.scheduler import AdmissionQueue, QueueDeadline, QueueFull
from sandboxd.schema import MAX_PRIORITY


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    return uvloop.run(coro)


async def _order(q: AdmissionQueue, jobs: list[tuple[str, int]], gap: float = 0.0) -> list[str]:
    order: list[str] = []
    gate = asyncio.Event()

    async def holder() -> None:
        async with q.slot():
            await gate.wait()

    async def job(name: str, prio: int) -> None:
        async with q.slot(prio):
            order.append(name)
            await asyncio.sleep(0)

    h = asyncio.ensure_future(holder())
    await asyncio.sleep(0)
    tasks = []
    for name, prio in jobs:
        tasks.append(asyncio.ensure_future(job(name, prio)))
        await asyncio.sleep(gap)
    await asyncio.sleep(0.01)
    gate.set()
    await asyncio.gather(h, *tasks)
    return order


def test_priority_then_fifo() -> None:
    q = AdmissionQueue("t", capacity=1, aging=0.0)
    jobs = [("low1", 0), ("high1", 5), ("low2", 0), ("high2", 5), ("mid", 2)]
    assert run(_order(q, jobs)) == ["high1", "high2", "mid", "low1", "low2"]


def test_aging_lets_old_low_priority_jobs_through() -> None:
    # 100 points/s: a low job that waited 0.05 s beats a job 2 points higher that just came.
    q = AdmissionQueue("t", capacity=1, aging=100.0)
    assert run(_order(q, [("old-low", 0), ("new-high", 2)], gap=0.05)) == ["old-low", "new-high"]
    q = AdmissionQueue("t", capacity=1, aging=0.0)
    assert run(_order(q, [("old-low", 0), ("new-high", 2)], gap=0.05)) == ["new-high", "old-low"]


def test_bounded_depth_rejects_with_retry_after() -> None:
    async def scenario() -> None:
        q = AdmissionQueue("t", capacity=1, max_depth=2)
        gate = asyncio.Event()

        async def hold() -> None:
            async with q.slot():
                await gate.wait()

        tasks = [asyncio.ensure_future(hold()) for _ in range(3)]
        await asyncio.sleep(0.01)
        assert q.running == 1 and q.depth == 2
        with pytest.raises(QueueFull) as e:
            async with q.slot():
                pass
        assert e.value.retry_after >= 1 and q.rejected == 1
        gate.set()
        await asyncio.gather(*tasks)
        assert q.running == 0 and q.depth == 0

    run(scenario())


def test_deadline_and_cancellation_free_their_place() -> None:
    async def scenario() -> None:
        q = AdmissionQueue("t", capacity=1)
        gate = asyncio.Event()

        async def hold() -> None:
            async with q.slot():
                await gate.wait()

        async def wait_forever() -> None:
            async with q.slot():
                raise AssertionError("cancelled before admission")

        h = asyncio.ensure_future(hold())
        await asyncio.sleep(0)
        with pytest.raises(QueueDeadline):
            async with q.slot(deadline=0.05):
                pass
        waiter = asyncio.ensure_future(wait_forever())
        await asyncio.sleep(0.01)
        assert q.depth == 1
        waiter.cancel()
        await asyncio.sleep(0)
        assert q.depth == 0
        gate.set()
        await h
        assert q.running == 0
        async with q.slot(deadline=0.01):  # free again: admitted at once
            assert q.running == 1

    run(scenario())


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    # One loop for all examples: a new one each is most of an example's time.
    lp = uvloop.new_event_loop()
    yield lp
    lp.close()


@settings(max_examples=100, deadline=None, database=None)
@given(st.lists(st.integers(-MAX_PRIORITY, MAX_PRIORITY) | st.sampled_from([0, 1]), max_size=30))
def test_without_aging_the_order_is_priority_then_arrival(loop: asyncio.AbstractEventLoop, prios: list[int]) -> None:
    async def scenario() -> list[int]:
        q = AdmissionQueue("t", capacity=1, aging=0.0)
        held = await q.acquire()
        order: list[int] = []

        async def job(i: int, prio: int) -> None:
            t = await q.acquire(prio)
            order.append(i)
            q.release(t)

        tasks = [asyncio.ensure_future(job(i, p)) for i, p in enumerate(prios)]
        await asyncio.sleep(0)  # each task queues, in the order they were made
        assert q.depth == len(prios)
        q.release(held)
        await asyncio.gather(*tasks)
        assert q.running == 0 and q.depth == 0
        return order

    assert loop.run_until_complete(scenario()) == sorted(range(len(prios)), key=lambda i: (-prios[i], i))
