"""One memory budget for the daemon: every holder of large bytes reserves from it.

Per-request limits bound one request; this bounds them all together.  The
holders (`HOLDERS`): request bodies being received and decoded, those of
queued and running jobs (stdin, files, tests' input and expected output,
sources), the compile cache, and jobs' results from the box's output until
they are in the job store (`ResultHold`; memory then keeps only a bounded
cache of small ones).  New work that would not fit
is refused at admission (`BudgetFull`, a `QueueFull`: HTTP 429 with a
Retry-After from the rate at which the budget is being freed), never accepted
and failed later.  The compile cache is reclaimable: admission evicts from it
before refusing.

Sizes are estimates (`nbytes`): the payload bytes plus a fixed overhead per
object, not a byte-exact measure of the Python heap.

What the budget gives back is given back to the host too (`HeapTrim`): glibc
keeps freed heap memory for reuse (its trim threshold rises to 64 MiB after
large frees), so each load of large bodies left the daemon 20-45 MiB larger
than it found it, uncounted by the budget and counted against the next load.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import time
from collections import OrderedDict
from collections.abc import Callable, Coroutine, Hashable
from typing import Any, Final, Generic, Protocol, TypeVar

import msgspec

from sandboxd.bodyhold import BODY
from sandboxd.engine.scheduler import QueueFull, Ticket
from sandboxd.rates import DrainRate, retry_after

MiB = 1 << 20
# "results": a job's result from its files out being read until it is in the
# job store (ResultHold; saved results live there, and memory keeps a bounded
# cache of small ones: sandboxd.jobs.table.HOT x HOT_BYTES).
# "receiving": request bodies from before their first byte is read until their
# handler is done with them (sandboxd.api.inbound.Inbound.hold_body), so a
# burst of large uploads is refused at its headers, not held in memory first.
# "sessions": each live session's frames (sandboxd.api.sessions.FRAMES_HOLD).
HOLDERS: Final = ("requests", "receiving", "sessions", "compile_cache", "results")
# Copies of a result held at once until it is saved: the result alone.  The job
# store is handed a large one split, its bytes written from the result's own
# objects (sandboxd.jobs.resultblob); a small one's msgpack (under 64 KiB) is not counted.
RESULT_COPIES = 1
# (The default budget, from the host's memory: sandboxd.config.host.default_memory_budget.)
COMPILE_CACHE_SHARE = 0.25  # of the budget, at most, for compiled programs
OVERHEAD = 64  # bytes counted per object besides its payload (headers, pointers)


# Bytes reserved or given back that make the daemon return its free heap to
# the host (malloc_trim), TRIM_DELAY s after the call that crossed it (the
# objects a hold counted are freed a moment after it is released; a large
# reservation is about to be filled: the heap earlier work left free goes first).
TRIM_AFTER = 16 * MiB
TRIM_DELAY = 0.5


def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim, or None where the C library has none (musl)."""
    name = ctypes.util.find_library("c")
    fn = getattr(ctypes.CDLL(name), "malloc_trim", None) if name else None
    if fn is None:
        return None
    fn.argtypes, fn.restype = [ctypes.c_size_t], ctypes.c_int
    return fn  # type: ignore[no-any-return]


class HeapTrim:
    """Free heap returned to the host once TRIM_AFTER bytes were reserved from
    or given back to the budget since the last time, on a thread (it takes the allocator's
    locks, not the GIL: ctypes releases it), at most one at a time.  Off the
    event loop's thread nothing is scheduled."""

    def __init__(self, every: int = TRIM_AFTER, delay: float = TRIM_DELAY) -> None:
        self.every, self.delay = every, delay
        self.fn = _malloc_trim()
        self.owed = 0
        self.trims = 0
        self._pending = False

    def note(self, n: int) -> None:
        self.owed += n
        if self.fn is None or self._pending or self.owed < self.every:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # (not the loop's thread: counted again from nothing, not raised on every call)
            self.owed = 0
            return
        self._pending = True
        loop.call_later(self.delay, self._run, loop)

    def _run(self, loop: asyncio.AbstractEventLoop) -> None:
        self.owed = 0
        assert self.fn is not None
        loop.run_in_executor(None, self.fn, 0).add_done_callback(self._done)

    def _done(self, _fut: asyncio.Future[int]) -> None:
        self.trims += 1
        self._pending = False


def nbytes(obj: Any) -> int:
    """Estimated bytes an object holds: payload plus OVERHEAD per object.
    (Every job's admission walks its request: a struct's fields are counted in
    one loop, leaves by exact type, recursing only into what nests.)"""
    t = type(obj)
    if t in _LEAF:
        return OVERHEAD + len(obj)
    if obj is None:
        return 0
    if isinstance(obj, msgspec.Struct):
        n = OVERHEAD
        for f in obj.__struct_fields__:
            v = getattr(obj, f)
            tv = type(v)
            if tv in _LEAF:
                n += OVERHEAD + len(v)
            elif tv in _SCALAR:
                n += OVERHEAD
            elif v is not None:
                n += nbytes(v)
        return n
    if isinstance(obj, bytes | bytearray | str):
        return OVERHEAD + len(obj)
    if isinstance(obj, list | tuple):
        n = OVERHEAD
        for x in obj:  # (a loop, not sum over a generator: a run's cmd, its lists of files)
            n += OVERHEAD + len(x) if type(x) in _LEAF else nbytes(x)
        return n
    if isinstance(obj, dict):
        return OVERHEAD + sum(nbytes(k) + nbytes(v) for k, v in obj.items())
    return OVERHEAD


_LEAF = frozenset(
    (bytes, str, bytearray, memoryview)
)  # (exact types; subclasses take isinstance's way; a memoryview: a run's stdin, sandboxd.schema.Stdin)
_SCALAR = frozenset((int, float, bool))


class BudgetFull(QueueFull):
    pass


class Reclaimable(Protocol):
    """A holder that can give bytes back on demand (a cache)."""

    @property
    def bytes(self) -> int: ...

    def shrink(self, need: int) -> int:
        """Free at least `need` bytes if it can; returns the bytes freed."""
        ...


class Hold:
    """Bytes one holder took from the budget; release() is idempotent."""

    __slots__ = ("budget", "holder", "n")

    def __init__(self, budget: MemoryBudget, holder: str, n: int) -> None:
        self.budget, self.holder, self.n = budget, holder, n

    def release(self, *, freed: bool = True) -> None:
        """freed=False: a reclaim (cache eviction), not work draining; it does
        not count in the rate Retry-After is derived from."""
        if self.n:
            self.budget._give_back(self.holder, self.n, freed)
            self.n = 0


class MemoryBudget:
    def __init__(self, limit: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self.room = limit  # (what the holders may take together: keep())
        self.used: dict[str, int] = dict.fromkeys(HOLDERS, 0)
        self.total = 0
        self.refused = 0
        self.freed = DrainRate(clock=clock)  # bytes released per second, for Retry-After
        self._reclaimers: list[Reclaimable] = []
        self.trim = HeapTrim()

    def keep(self, n: int) -> None:
        """Leave n bytes of the limit to what no holder counts (sandboxd.bodyhold.headroom)."""
        self.room = self.limit - n

    def add_reclaimer(self, r: Reclaimable) -> None:
        self._reclaimers.append(r)

    def _fits(self, n: int) -> bool:
        short = self.total + n - self.room
        if short <= 0:
            return True  # (the common case: no reclaimer is asked what it holds)
        if short > sum(r.bytes for r in self._reclaimers):
            return False  # (evicting would not make it fit: keep the cache)
        for r in self._reclaimers:
            if short <= 0:
                break
            short -= r.shrink(short)
        return self.total + n <= self.room

    def try_reserve(self, holder: str, n: int) -> Hold | None:
        if not self._fits(n):
            return None
        return self.force(holder, n)

    def reserve(self, holder: str, n: int, what: str = "the job") -> Hold:
        hold = self.try_reserve(holder, n)
        if hold is None:
            message, retry = self.refuse(n, what)
            raise BudgetFull("memory_budget", self.total, retry, message)
        return hold

    def admit_request(self, n: int, what: str) -> Hold:
        """A new job's "requests" hold of n bytes, taking its share of the
        place of the hold of the body it came in (sandboxd.bodyhold.BODY) if
        that is this budget's: up to n of the body's bytes are credited, not
        counted twice; the rest of the body's hold (its other copies) stays
        until the job's spec is stored (sandboxd.bodyhold.stored)."""
        body = BODY.get()
        if not isinstance(body, Hold) or body.budget is not self or not body.n:
            return self.reserve("requests", n, what)
        credit = min(n, body.n)
        self._give_back(body.holder, credit, False)
        body.n -= credit
        try:
            return self.reserve("requests", n, what)
        except BudgetFull:
            self.force(body.holder, credit)  # (still held: the body is not admitted)
            body.n += credit
            raise

    def refuse(self, n: int, what: str) -> tuple[str, float]:
        """Count a refusal of n bytes that did not fit: its message and Retry-After."""
        self.refused += 1
        short = self.total + n - self.room
        retry = retry_after(short, self.freed.rate())
        message = (
            f"the daemon's memory budget is full: {what} needs {n} bytes, "
            f"{max(0, self.room - self.total)} of memory_budget = {self.limit} are free "
            f"({self.limit - self.room} of it kept for the daemon itself); "
            f"retry in {retry:.0f} s"
        )
        return message, retry

    def force(self, holder: str, n: int) -> Hold:
        """Account bytes that are held whatever the budget says (small remnants)."""
        self.used[holder] += n
        self.total += n
        self.trim.note(n)  # (what earlier work left free in the heap, given back before these bytes are)
        return Hold(self, holder, n)

    def _give_back(self, holder: str, n: int, freed: bool) -> None:
        self.used[holder] -= n
        self.total -= n
        self.trim.note(n)
        if freed:
            self.freed.note(n)

    def snapshot(self) -> dict[str, Any]:
        return {
            "limit": self.limit,
            "room": self.room,  # (the holders' share: limit less its headroom)
            "used": self.total,
            "refused": self.refused,
            "holders": dict(self.used),
            "trims": self.trim.trims,  # (free heap returned to the host: HeapTrim)
        }


K = TypeVar("K", bound=Hashable)
V = TypeVar("V")
T = TypeVar("T")


class ByteLRU(Generic[K, V]):
    """An LRU cache bounded in bytes (a share of the budget, reserved from it
    entry by entry) and reclaimable: the budget evicts from it before it
    refuses new work."""

    def __init__(self, budget: MemoryBudget, holder: str, share: float) -> None:
        self.budget, self.holder = budget, holder
        self.cap = int(budget.limit * share)
        self.bytes = 0
        self._items: OrderedDict[K, tuple[V, Hold]] = OrderedDict()
        budget.add_reclaimer(self)

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: K) -> V | None:
        hit = self._items.get(key)
        if hit is None:
            return None
        self._items.move_to_end(key)
        return hit[0]

    def put(self, key: K, value: V, size: int) -> bool:
        """False: not cached (larger than the cache, or the budget is full)."""
        if size > self.cap or key in self._items:
            return False
        self._evict(self.bytes + size - self.cap)
        hold = self.budget.try_reserve(self.holder, size)
        if hold is None:
            return False
        self._items[key] = (value, hold)
        self.bytes += size
        return True

    def _evict(self, need: int) -> int:
        freed = 0
        while freed < need and self._items:
            _, (_, hold) = self._items.popitem(last=False)
            freed += hold.n
            self.bytes -= hold.n
            hold.release(freed=False)
        return freed

    def shrink(self, need: int) -> int:
        return self._evict(need)


class ResultHold:
    """One job's result in the budget (holder "results"), from its box's
    files out until the job store has it.  A file out is read only if its
    bytes fit (`room`, before a byte of it is read): one that does not is
    refused with the budget's message and the run's other files go on, so a
    load of large results never holds more than the budget.  Output the run
    has already captured (bounded per run by limits.output) is counted as it
    is (`settle`).  release() is idempotent."""

    __slots__ = ("budget", "hold", "size")

    def __init__(self, budget: MemoryBudget) -> None:
        self.budget = budget
        self.hold = Hold(budget, "results", 0)
        self.size = 0  # the final result's bytes (nbytes), once settled

    @property
    def n(self) -> int:
        return self.hold.n

    def room(self, size: int) -> str | None:
        """For sandboxd.sandbox.boxfiles (Room): None if a file of `size`
        bytes may be read (its bytes now held), else the reason it may not."""
        cost = size * RESULT_COPIES
        got = self.budget.try_reserve("results", cost)
        if got is None:
            why, _ = self.budget.refuse(cost, f"this file out ({size} bytes)")
            return f"not read: {why}"
        self._take(got)
        return None

    def settle(self, payload: object) -> None:
        """The final result: what it holds beyond the files already counted."""
        self.size = nbytes(payload)
        short = self.size * RESULT_COPIES - self.hold.n
        if short > 0:
            self._take(self.budget.force("results", short))

    def _take(self, got: Hold) -> None:
        self.hold.n += got.n
        got.n = 0  # (one Hold, released once)

    def release(self) -> None:
        self.hold.release()


class Admission:
    """A job's admission: its promised queue places and its request's bytes.
    spawn() starts the job's work under it; close() when the job is final."""

    __slots__ = ("hold", "ticket")

    def __init__(self, ticket: Ticket, hold: Hold) -> None:
        self.ticket, self.hold = ticket, hold

    def spawn(self, coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        return self.ticket.spawn(coro)

    def close(self) -> None:
        self.ticket.close()
        self.hold.release()
