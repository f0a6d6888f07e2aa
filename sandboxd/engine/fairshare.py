"""Weighted fair queuing across tenants, in front of one admission queue.

Each tenant (a flow) keeps its waiters in its own heap, in the scheduler's
order (priority with aging, FIFO within a priority: sandboxd.engine.scheduler),
so priorities order a tenant's own jobs and never another's.  Which flow goes
next is start-time fair queuing on box-seconds: a flow's virtual time grows by
the box-seconds its runs hold divided by its weight, and the backlogged flow
with the smallest virtual time is served.  A run's cost is charged twice, in
two halves that sum to the truth: the expected cost (the queue's average run)
when it is given a box, so that several free boxes do not all go to one flow
before any of its runs ends, then the difference from the measured cost at
its release.  A flow that was idle rejoins at the current virtual time: idling
banks no credit to flood with later.

With one flow (no tenants configured) this is exactly the old single heap.
"""

from __future__ import annotations

import heapq
from typing import Any, Generic, Protocol, TypeVar

# Time constant (in runs) of the average run cost: long enough to smooth one
# slow run, short enough to follow a change of workload within a few dozen runs.
COST_RUNS = 32.0
# The expected cost before any run is measured: a short run's box-seconds.  Not
# 0, or the first runs would cost nothing and all go to whoever asked first.
PRIOR_COST = 0.1


class _Ordered(Protocol):
    def __lt__(self, other: Any, /) -> bool: ...


W = TypeVar("W", bound=_Ordered)  # a waiter (the scheduler's _Waiter)


class _Flow(Generic[W]):
    __slots__ = ("heap", "vtime", "weight")

    def __init__(self, weight: float) -> None:
        self.heap: list[W] = []
        self.vtime = 0.0
        self.weight = weight


class FairQueue(Generic[W]):
    def __init__(self) -> None:
        self._flows: dict[str, _Flow[W]] = {}
        self._backlogged: set[str] = set()
        self._vnow = 0.0  # virtual time of the last flow served
        self.cost = PRIOR_COST  # average box-seconds of a run

    def _flow(self, tenant: str, weight: float) -> _Flow[W]:
        f = self._flows.get(tenant)
        if f is None:
            f = self._flows[tenant] = _Flow[W](weight)
            f.vtime = self._vnow
        f.weight = weight  # (an edited tenant's weight applies from now)
        return f

    def push(self, tenant: str, weight: float, w: W) -> None:
        f = self._flow(tenant, weight)
        if not f.heap:
            f.vtime = max(f.vtime, self._vnow)
            self._backlogged.add(tenant)
        heapq.heappush(f.heap, w)

    def pop(self) -> tuple[str, W] | None:
        """The next waiter: the head of the backlogged flow with the least virtual time."""
        if not self._backlogged:
            return None
        flows = self._flows
        if len(self._backlogged) == 1:
            name = next(iter(self._backlogged))
        else:
            name = min(self._backlogged, key=lambda n: flows[n].vtime)
        f = flows[name]
        w = heapq.heappop(f.heap)
        if not f.heap:
            self._backlogged.discard(name)
        self._vnow = f.vtime
        f.vtime += self.cost / f.weight
        return name, w

    def refund(self, tenant: str) -> None:
        """A waiter popped but gone (gave up while waiting): its expected charge back."""
        f = self._flows[tenant]
        f.vtime -= self.cost / f.weight

    def started(self, tenant: str, weight: float) -> None:
        """A run given a box without waiting (a free box, an empty queue): charged its expected cost."""
        # (the per-run path of an uncontended queue: kept to a lookup and a sum)
        f = self._flows.get(tenant) or self._flow(tenant, weight)
        v = self._vnow
        f.vtime = (f.vtime if f.vtime > v else v) + self.cost / weight

    def charge(self, tenant: str, seconds: float) -> None:
        """A run of `tenant` held its box `seconds`: settle its charge."""
        expected = self.cost
        error = seconds - expected
        self.cost = expected + error / COST_RUNS
        f = self._flows.get(tenant)
        if f is not None:
            f.vtime += error / f.weight
