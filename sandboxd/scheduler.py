"""Priority admission in front of a pool of boxes.

Higher priority first, FIFO within a priority, and aging: a waiter gains
`aging` priority points per second waited, so low priority cannot starve.
With aging the order of two waiters never changes while they wait
(p1 + a*(now-t1) > p2 + a*(now-t2)  <=>  p1 - a*t1 > p2 - a*t2), so a plain
heap keyed on `priority - aging*enqueued_at` is exact and O(log n).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field


class QueueFull(Exception):
    def __init__(self, name: str, depth: int, retry_after: float) -> None:
        super().__init__(f"queue {name!r} is full ({depth} waiting); retry in {retry_after:.0f} s")
        self.retry_after = retry_after


class QueueDeadline(Exception):
    def __init__(self, name: str, waited: float) -> None:
        super().__init__(f"waited {waited:.1f} s in queue {name!r}, past the job's queue deadline")


@dataclass(order=True)
class _Waiter:
    key: float
    seq: int
    priority: int = field(compare=False)
    fut: asyncio.Future[None] = field(compare=False)


class AdmissionQueue:
    def __init__(self, name: str, capacity: int, max_depth: int = 10_000, aging: float = 1.0) -> None:
        self.name = name
        self.capacity = capacity
        self.max_depth = max_depth
        self.aging = aging
        self.running = 0
        self._heap: list[_Waiter] = []
        self._seq = itertools.count()
        self._queued = Counter[int]()
        self.rejected = 0
        self.admit_seconds = 0.0  # smoothed recent run time, for Retry-After

    @property
    def depth(self) -> int:
        return sum(self._queued.values())

    def queued_by_priority(self) -> dict[int, int]:
        return {p: n for p, n in sorted(self._queued.items(), reverse=True) if n}

    @asynccontextmanager
    async def slot(self, priority: int = 0, deadline: float | None = None) -> AsyncIterator[None]:
        t0 = await self.acquire(priority, deadline)
        try:
            yield
        finally:
            self.release(t0)

    async def acquire(self, priority: int = 0, deadline: float | None = None) -> float:
        """Wait for a slot; returns the admission time to hand back to release().
        (The per-run path uses this pair directly: cheaper than a context manager.)"""
        await self._acquire(priority, deadline)
        return time.monotonic()

    def release(self, admitted: float) -> None:
        self.admit_seconds = 0.9 * self.admit_seconds + 0.1 * (time.monotonic() - admitted)
        self._release()

    async def _acquire(self, priority: int, deadline: float | None) -> None:
        if self.running < self.capacity and not self.depth:
            self.running += 1
            return
        depth = self.depth
        if depth >= self.max_depth:
            self.rejected += 1
            # Time for the queue ahead to drain at the recent pace, at least a second.
            retry = max(1.0, depth * max(self.admit_seconds, 0.001) / max(self.capacity, 1))
            raise QueueFull(self.name, depth, retry)
        now = time.monotonic()
        # Min-heap: the smallest key is the highest effective priority.
        key = self.aging * now - priority
        w = _Waiter(key, next(self._seq), priority, asyncio.get_running_loop().create_future())
        heapq.heappush(self._heap, w)
        self._queued[priority] += 1
        try:
            if deadline is None:
                await w.fut
            else:
                await asyncio.wait_for(asyncio.shield(w.fut), deadline)
        except BaseException as e:
            if w.fut.done() and not w.fut.cancelled():
                # Admitted just as we gave up: pass the slot on.
                self._release()
            else:
                w.fut.cancel()
                self._queued[priority] -= 1
            if isinstance(e, TimeoutError):
                raise QueueDeadline(self.name, time.monotonic() - now) from None
            raise

    def _release(self) -> None:
        self.running -= 1
        while self._heap and self.running < self.capacity:
            w = heapq.heappop(self._heap)
            if w.fut.done():
                continue  # gave up while waiting (already uncounted)
            self._queued[w.priority] -= 1
            self.running += 1
            w.fut.set_result(None)
