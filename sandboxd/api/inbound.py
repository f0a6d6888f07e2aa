"""Bounds on what the daemon takes in, shared by every transport.

- `ByteGate`: bytes held at once by one kind of work, FIFO, with a fast
  refusal (`try_acquire`) or a wait (`acquire`).
- `offload`: CPU-heavy decoding of large inputs (JSON/msgpack bodies, base64,
  zips) on a small thread pool instead of the event loop, bounded in jobs at
  once (the pool's threads) and in input bytes admitted (a ByteGate); small
  inputs, the common case, are decoded inline at no cost.  Large JSON is
  parsed in a decode worker process instead (sandboxd.api.decodepool, driven
  from these threads): `offload(n, msgspec.json.decode, body)` goes there
  once the daemon has started the workers, and typed bodies through
  sandboxd.api.bodies.decode_body.
- `Inbound`: the daemon-wide state of the transports' limits (connections
  open, bytes being received), built once from the configuration; with the
  daemon's memory budget (sandboxd.engine.budget), `hold_body` reserves a
  body's bytes from it before the first is read.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import dataclasses
import mmap
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

import msgspec

from sandboxd.api import replies
from sandboxd.api.bodies import Body, Format, decode
from sandboxd.api.decodepool import DECODE
from sandboxd.bodyhold import MAX_COPIES, BodyHold, copies, headroom
from sandboxd.config import DEFAULT, Config
from sandboxd.errors import error

T = TypeVar("T")
MiB = 1 << 20

# Inputs below this are decoded inline: a thread hop costs more than they do.
INLINE_BELOW = 256 << 10
OFFLOAD_WORKERS = 2  # jobs decoding at once; the host has few cores and boxes need them
OFFLOAD_BYTES = 256 * MiB  # input bytes admitted to the pool at once (running or waiting for a thread)


class BodyBudget(Protocol):
    """What the transports use of the daemon's memory budget
    (sandboxd.engine.budget.MemoryBudget; the API is not to import the engine:
    a coordinator serves it without one)."""

    limit: int

    def try_reserve(self, holder: str, n: int) -> BodyHold | None: ...

    def force(self, holder: str, n: int) -> BodyHold: ...

    def refuse(self, n: int, what: str) -> tuple[str, float]: ...

    def keep(self, n: int) -> None: ...


# Bodies this large are received into anonymous memory (mmap) instead of a
# bytearray: its zero pages are faulted in a chunk at a time as they are filled,
# where bytearray(n) zeroes all n bytes at once (64 MiB: tens of ms of the event
# loop, more on a busy host).
MAPPED_FROM = 1 << 20
RECEIVE_CHUNK = 1 << 20  # the socket's reads into it (its reader's buffer limit)


def receive_buffer(n: int, mapped: bool = True) -> bytearray | mmap.mmap:
    """A buffer for a body of n bytes, filled by its transport as it arrives and
    handed over as it is (sandboxd.api.bodies.Body), never copied into bytes."""
    return mmap.mmap(-1, n) if mapped and n >= MAPPED_FROM else bytearray(n)


class ByteGate:
    """A counting semaphore over bytes.  A request larger than the whole capacity
    is let through alone (when nothing else holds the gate) rather than never."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.used = 0
        self._waiters: collections.deque[tuple[int, asyncio.Future[None]]] = collections.deque()

    def _fits(self, n: int) -> bool:
        return self.used + n <= self.capacity or self.used == 0

    def try_acquire(self, n: int) -> bool:
        if self._waiters or not self._fits(n):
            return False
        self.used += n
        return True

    async def acquire(self, n: int) -> None:
        if self.try_acquire(n):
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (n, fut)
        self._waiters.append(entry)
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release(n)  # granted just as we were cancelled: give it back
            else:
                self._waiters.remove(entry)
                self._wake()
            raise

    def release(self, n: int) -> None:
        self.used -= n
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self._fits(self._waiters[0][0]):
            n, fut = self._waiters.popleft()
            if not fut.done():
                self.used += n
                fut.set_result(None)


class Offload:
    def __init__(self, workers: int = OFFLOAD_WORKERS, max_bytes: int = OFFLOAD_BYTES) -> None:
        self.workers = workers
        self.gate = ByteGate(max_bytes)
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None

    async def run(self, cost: int, fn: Callable[..., T], *args: Any) -> T:
        """fn(*args): inline when `cost` (input bytes) is small, else on the pool."""
        if cost < INLINE_BELOW:
            return fn(*args)
        if fn is msgspec.json.decode and len(args) == 1 and DECODE.takes(cost):
            fn = DECODE.untyped  # (the same value or exception, parsed in a worker process)
        if self._pool is None:
            self._pool = concurrent.futures.ThreadPoolExecutor(self.workers, thread_name_prefix="sandboxd-decode")
        await self.gate.acquire(cost)
        fut = asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)
        # Released when the thread is done, not when a cancelled caller stops waiting.
        fut.add_done_callback(lambda _f: self.gate.release(cost))
        return await asyncio.shield(fut)


OFFLOAD = Offload()


async def offload(cost: int, fn: Callable[..., T], *args: Any) -> T:
    return await OFFLOAD.run(cost, fn, *args)


async def decode_body(data: Body, typ: type[T], fmt: Format, what: str = "body") -> T:
    """bodies.decode() from the event loop: a large JSON body parsed in a decode
    worker, any other large body on the offload threads, a small one inline."""
    if fmt == "json" and DECODE.takes(len(data)):
        return await offload(len(data), DECODE.typed, data, typ, what)
    return await offload(len(data), decode, data, typ, fmt, what)


@dataclasses.dataclass
class Listener:
    """Connections open on one listener (an HTTP port, the Unix socket)."""

    cap: int
    open: int = 0
    probing: int = 0  # HTTP: over the cap, waiting to show a health check


@dataclasses.dataclass
class Inbound:
    """The transports' limits and their daemon-wide state, from the
    configuration's [http] and [socket] sections (`from_config`)."""

    header_timeout: float
    body_timeout: float
    idle_timeout: float
    socket_idle_timeout: float
    max_connections: int  # all listeners and the Unix socket together
    max_connections_per_listener: int
    max_receiving_bytes: int
    max_event_streams: int  # progress streams open at once (sandboxd.api.sse)
    # The daemon's memory budget (a coordinator has none: it holds no jobs' bytes).
    budget: BodyBudget | None = None
    connections: int = 0
    event_streams: int = dataclasses.field(default=0, init=False)
    receiving: ByteGate = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        self.receiving = ByteGate(self.max_receiving_bytes)

    def hold_body(self, n: int, msgpack: bool = True) -> BodyHold | None:
        """The memory budget's bytes for a body of n bytes about to be
        received and every copy of it its request makes on its way in
        (sandboxd.bodyhold.copies), held until its job's spec is stored or
        its handler is done; raises queue_full (429, Retry-After) when they
        do not fit, so the body is refused before a byte of it is read."""
        if self.budget is None:
            return None
        cost = copies(n, msgpack)
        hold = self.budget.try_reserve("receiving", cost)
        if hold is None:
            what = f"the request body ({n} bytes received and decoded)"
            raise error("queue_full", *self.budget.refuse(cost, what))
        return hold

    def hold_reply(self, payload: int, how: replies.Encoding) -> BodyHold | None:
        """The memory budget's count of a reply carrying `payload` bytes of
        results (replies.reply_cost), while it is encoded and written; a small
        one (under replies.LARGE) is not counted.  Forced, not refused: the
        result exists (a waited job is done), and what it holds makes new work
        wait at admission instead."""
        if self.budget is None or payload < replies.LARGE:
            return None
        return self.budget.force("results", replies.reply_cost(payload, how))

    @classmethod
    def from_config(cls, cfg: Config, budget: BodyBudget | None = None) -> Inbound:
        http = cfg.http
        if budget is not None:  # (its holders leave the daemon its own working memory: sandboxd.bodyhold.headroom)
            budget.keep(headroom(budget.limit, int(MAX_COPIES * http.max_body)))
        return cls(
            header_timeout=http.header_timeout,
            body_timeout=http.body_timeout,
            idle_timeout=http.idle_timeout,
            socket_idle_timeout=cfg.socket.idle_timeout,
            max_connections=http.max_connections,
            max_connections_per_listener=http.max_connections_per_listener,
            max_receiving_bytes=http.max_receiving_bytes,
            max_event_streams=http.max_event_streams,
            budget=budget,
        )


def default() -> Inbound:
    """The configured defaults, for an app or server built without a configuration (tests)."""
    return Inbound.from_config(DEFAULT)
