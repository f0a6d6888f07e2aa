"""Priority admission in front of a pool of boxes.

Higher priority first, FIFO within a priority, and aging: a waiter gains
`aging` priority points per second waited, so low priority cannot starve.
With aging the order of two waiters never changes while they wait
(p1 + a*(now-t1) > p2 + a*(now-t2)  <=>  p1 - a*t1 > p2 - a*t2), so a plain
heap keyed on `priority - aging*enqueued_at` is exact and O(log n).

Honest back-pressure: a job is admitted (its queues checked, places promised
to it: `Ticket`) before it is acknowledged, so an accepted job is never failed
later for a full queue; and Retry-After is the time the work ahead takes to
drain at the measured rate (`DrainRate`, `retry_after`).

Across tenants (a Ticket names its job's), waiters are served by weighted fair
queuing on box-seconds (sandboxd.engine.fairshare); the order above holds
within each tenant.
"""

from __future__ import annotations

import asyncio
import contextvars
import itertools
import time
from collections import Counter
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from typing import Any, NamedTuple, TypeVar

from sandboxd.config import ENGINE
from sandboxd.engine.fairshare import FairQueue
from sandboxd.rates import DrainRate, retry_after

T = TypeVar("T")


_ADMITTED: contextvars.ContextVar[Ticket | None] = contextvars.ContextVar("sandboxd_admitted", default=None)


class Ticket:
    """An admitted job's places in its queues, promised before the job was
    acknowledged.  The job's runs (tasks started by `spawn`, and every task
    they start: the context is inherited) are never refused for depth; each
    run entering a queue turns one promised place into a real one.  close()
    when the job is final returns what was not used."""

    __slots__ = ("_promised", "tenant", "weight")

    def __init__(self, tenant: str = "", weight: float = 1.0) -> None:
        self._promised: dict[AdmissionQueue, int] = {}
        # Whose runs these are, for fair share across tenants (sandboxd.engine.fairshare).
        self.tenant, self.weight = tenant, weight

    def spawn(self, coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        ctx = contextvars.copy_context()
        ctx.run(_ADMITTED.set, self)
        return asyncio.get_running_loop().create_task(coro, context=ctx)

    def _enter(self, q: AdmissionQueue) -> None:
        n = self._promised.get(q, 0)
        if n:
            self._promised[q] = n - 1
            q.promised -= 1

    def close(self) -> None:
        for q, n in self._promised.items():
            q.promised -= n
        self._promised.clear()


class QueueFull(Exception):
    def __init__(self, name: str, depth: int, retry_after: float, message: str = "") -> None:
        super().__init__(message or f"queue {name!r} is full ({depth} waiting); retry in {retry_after:.0f} s")
        self.retry_after = retry_after


class QueueDeadline(Exception):
    def __init__(self, name: str, waited: float) -> None:
        super().__init__(f"waited {waited:.1f} s in queue {name!r}, past the job's queue deadline")


class _Waiter(NamedTuple):
    """Ordered as a tuple, compared in C (a dataclass's generated __lt__ is
    Python, several calls per queued run in the heap: issue 18): by key, then
    seq, which is unique, so a comparison never reaches the fields after it."""

    key: float
    seq: int
    priority: int
    fut: asyncio.Future[None]


class AdmissionQueue:
    def __init__(
        self, name: str, capacity: int, max_depth: int = ENGINE.queue_depth, aging: float = ENGINE.aging
    ) -> None:
        self.name = name
        self.capacity = capacity
        self.max_depth = max_depth
        self.aging = aging
        self.running = 0
        self._fair = FairQueue[_Waiter]()  # waiters per tenant, in priority order within each
        self._seq = itertools.count()
        self._queued = Counter[int]()
        self.rejected = 0
        self.promised = 0  # places promised to admitted jobs whose runs have not entered yet
        self.drained = DrainRate()  # runs released per second, for Retry-After

    @property
    def depth(self) -> int:
        return sum(self._queued.values())

    def _full(self) -> QueueFull | None:
        # Promised runs take the free slots first; the rest will wait.
        ahead = max(0, self.depth + self.promised - max(0, self.capacity - self.running))
        if ahead < self.max_depth:
            return None
        self.rejected += 1
        return QueueFull(self.name, ahead, retry_after(ahead, self.drained.rate()))

    def admit(self, ticket: Ticket, runs: int = 1, force: bool = False) -> None:
        """Promise `runs` places to an admitted job, or raise QueueFull (at
        submission, before the job is acknowledged).  force: a job acknowledged
        before a restart, which may not be refused now."""
        full = None if force else self._full()
        if full is not None:
            raise full
        self.promised += runs
        ticket._promised[self] = ticket._promised.get(self, 0) + runs

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
        self.drained.note()
        ticket = _ADMITTED.get()
        self._fair.charge("" if ticket is None else ticket.tenant, time.monotonic() - admitted)
        self._release()

    async def _acquire(self, priority: int, deadline: float | None) -> None:
        ticket = _ADMITTED.get()
        tenant, weight = ("", 1.0) if ticket is None else (ticket.tenant, ticket.weight)
        if ticket is not None:
            ticket._enter(self)
        if self.running < self.capacity and not self.depth:
            self.running += 1
            self._fair.started(tenant, weight)
            return
        if ticket is None:  # a run outside any admitted job (self-test, CLI): checked here
            full = self._full()
            if full is not None:
                raise full
        now = time.monotonic()
        # Min-heap: the smallest key is the highest effective priority.
        key = self.aging * now - priority
        w = _Waiter(key, next(self._seq), priority, asyncio.get_running_loop().create_future())
        self._fair.push(tenant, weight, w)
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
        while self.running < self.capacity:
            nxt = self._fair.pop()
            if nxt is None:
                return
            tenant, w = nxt
            if w.fut.done():
                self._fair.refund(tenant)
                continue  # gave up while waiting (already uncounted)
            self._queued[w.priority] -= 1
            self.running += 1
            w.fut.set_result(None)
