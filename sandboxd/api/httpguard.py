"""Connection-level limits of the HTTP listeners, in front of aiohttp.

aiohttp bounds the size of a request line and of header fields (max_line_size,
max_field_size: 8190 bytes by default), the body (client_max_size) and closes
keep-alive connections after keepalive_timeout, but has no deadline for a
request's headers to arrive, no cap on open connections, and nothing for a
client that stops reading its reply.  `GuardedSite` is a TCPSite whose
connections pass through `_Guard`, a protocol wrapped around aiohttp's own:

- a connection must deliver a request's headers within `header_timeout` of
  connecting or of its first byte after an idle spell (slowloris, half-open
  connections), may sit idle between requests for `idle_timeout`, and a reply
  the client does not read for `body_timeout` ends the connection;
- at most `max_connections_per_listener` per listener and `max_connections`
  daemon-wide are served; past either, up to PROBE_SLOTS more connections get
  PROBE_TIMEOUT to send a request line: /healthz and /readyz are served (so a
  full daemon still answers its health checks), anything else gets 503 with
  Retry-After and the connection is closed; past those, 503 at once.

The body deadline and the daemon-wide cap on bytes being received are the
middleware's (httpserver.with_body): it knows Content-Length before reading.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, cast

import msgspec
from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from sandboxd.api import accept
from sandboxd.api.inbound import Inbound, Listener

PROBE_SLOTS = 64
PROBE_TIMEOUT = 2.0
HEALTH = (b"GET /healthz ", b"GET /readyz ", b"HEAD /healthz ", b"HEAD /readyz ")
RETRY_AFTER = 1
BACKLOG = 4096


def refusal(message: str, status: bytes = b"503 Service Unavailable") -> bytes:
    body = msgspec.json.encode({"error": {"code": "queue_full", "message": message, "retry_after": RETRY_AFTER}})
    head = (
        b"HTTP/1.1 " + status + b"\r\nContent-Type: application/json\r\nConnection: close\r\n"
        b"Retry-After: %d\r\nContent-Length: %d\r\n\r\n" % (RETRY_AFTER, len(body))
    )
    return head + body


# The guard of each open connection, by transport: the middleware marks a
# connection busy while a request is handled (no header or idle deadline then).
GUARDS: dict[Any, _Guard] = {}


class _Guard(asyncio.Protocol):
    """A connection's deadlines and caps, in front of aiohttp's handler, which
    is made when the connection's first byte arrives (`make`): a handler is
    a parser, a task and a timer set up when the connection is made and torn
    down when it goes, ~150 us of the loop each: 256 half-open connections
    accepted in one turn held the loop 39 ms (and /healthz behind them), and
    500 of them closing at once as long again, for connections that never
    send a request."""

    def __init__(self, make: Callable[[], RequestHandler], listener: Listener, inbound: Inbound) -> None:
        self.make = make
        self.inner: RequestHandler | None = None
        self.listener = listener
        self.inbound = inbound
        self.transport: asyncio.Transport | None = None
        self.state = "new"  # probe, headers, busy, idle, discard, closed
        self.buf = b""
        self.timer: asyncio.TimerHandle | None = None  # header, idle or probe deadline
        self.wtimer: asyncio.TimerHandle | None = None  # a reply the client stopped reading
        self.paused = False
        self.admitted = False
        self.loop = asyncio.get_running_loop()

    # --- deadlines ---

    def _arm(self, seconds: float, why: str) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.timer = self.loop.call_later(seconds, self._expire, why) if seconds > 0 else None

    def _expire(self, why: str) -> None:
        self.timer = None
        if self.transport is None or self.transport.is_closing():
            return
        if self.state == "probe":
            self.listener.probing -= 1
            self.state = "closed"
            self._refuse()
            return
        if why == "idle" and self.paused:
            self._arm(self.inbound.idle_timeout, why)  # still sending a reply: not idle
            return
        self.transport.abort()  # nothing useful can be said to a client that does not talk

    def _write_stalled(self) -> None:
        self.wtimer = None
        if self.transport is not None and not self.transport.is_closing():
            self.transport.abort()  # a client that stopped reading its reply holds it in memory

    def busy(self) -> None:
        self.state = "busy"
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def discard(self) -> None:
        """The request's body is refused unread: what more arrives of it is
        dropped here, not handed to aiohttp, which would parse and buffer it,
        then join and drop it (its "lingering" drain of an unread body, up to
        10 s): 19 refused 50 MiB uploads kept the loop busy ~20 ms a turn
        with it.  It is still read (a client that sends its whole body
        before reading the reply would get a reset, not its refusal), but one
        read a turn: read as fast as it came, libuv's reads of 19 such
        uploads (up to 32 a socket a turn) made 50 ms turns."""
        self.state = "discard"

    def _read_again(self) -> None:
        if self.state == "discard" and self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def idle(self) -> None:
        if self.state == "busy":
            self.state = "idle"
            self._arm(self.inbound.idle_timeout, "idle")

    # --- asyncio.Protocol, delegated to aiohttp's handler once admitted ---

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # (uvloop's are not asyncio.Transport subclasses)
        self.transport = transport
        full = self.listener.open >= self.listener.cap or self.inbound.connections >= self.inbound.max_connections
        if full and self.listener.probing >= PROBE_SLOTS:
            self.state = "closed"
            transport.write(refusal(self._why()))
            transport.close()
            return
        GUARDS[transport] = self
        if full:
            self.state = "probe"
            self.listener.probing += 1
            self._arm(PROBE_TIMEOUT, "probe")
            return
        self._admit()

    def _admit(self) -> None:
        assert self.transport is not None
        self.listener.open += 1
        self.inbound.connections += 1
        self.admitted = True
        self.state = "headers"
        self._arm(self.inbound.header_timeout, "headers")

    def _handler(self) -> RequestHandler:
        """aiohttp's handler of this connection, made on its first byte."""
        if self.inner is None:
            assert self.transport is not None
            self.inner = self.make()
            self.inner.connection_made(self.transport)
        return self.inner

    def _why(self) -> str:
        return (
            f"too many connections (at most {self.listener.cap} on this listener, "
            f"{self.inbound.max_connections} in all): retry in {RETRY_AFTER} s"
        )

    def _refuse(self) -> None:
        assert self.transport is not None
        self.transport.write(refusal(self._why()))
        self.transport.close()

    def _probe(self, data: bytes) -> None:
        self.buf += data
        if b"\n" not in self.buf and len(self.buf) < 64:
            return
        self.listener.probing -= 1
        if self.buf.startswith(HEALTH):
            buf, self.buf = self.buf, b""
            # Served even when full: counted as open from here, like any other.
            self._admit()
            self._handler().data_received(buf)
            return
        self.state = "closed"
        self._refuse()

    def data_received(self, data: bytes) -> None:
        if self.state == "probe":
            self._probe(data)
            return
        if self.state == "discard":
            if self.transport is not None:
                self.transport.pause_reading()  # (the next read in the next turn)
                self.loop.call_soon(self._read_again)
            return
        if self.state == "closed":
            return
        if self.state == "idle":
            self.state = "headers"
            self._arm(self.inbound.header_timeout, "headers")
        self._handler().data_received(data)

    def eof_received(self) -> bool | None:
        if self.state not in ("probe", "closed") and self.inner is not None:
            self.inner.eof_received()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        for t in (self.timer, self.wtimer):
            if t is not None:
                t.cancel()
        if self.transport is not None:
            GUARDS.pop(self.transport, None)
        if self.state == "probe":
            self.listener.probing -= 1
        self.state = "closed"
        if self.admitted:
            self.admitted = False
            self.listener.open -= 1
            self.inbound.connections -= 1
            if self.inner is not None:
                self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        # The client is not reading its reply: it has body_timeout to start again.
        self.paused = True
        self.wtimer = self.loop.call_later(self.inbound.body_timeout, self._write_stalled)
        if self.inner is not None:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.paused = False
        if self.wtimer is not None:
            self.wtimer.cancel()
            self.wtimer = None
        if self.inner is not None:
            self.inner.resume_writing()


class GuardedSite(web.TCPSite):
    """A TCPSite whose connections go through _Guard (aiohttp 3.x's TCPSite.start,
    with the protocol factory wrapped), accepted a batch per turn of the loop
    (sandboxd.api.accept)."""

    def __init__(self, runner: web.BaseRunner, host: str, port: int, inbound: Inbound) -> None:
        # A burst of connections (500 opened at once) overflowed aiohttp's
        # backlog of 128: the kernel then drops SYNs, and a /healthz probe
        # waited a second for its retransmission.  (The kernel caps it at somaxconn.)
        super().__init__(runner, host, port, backlog=BACKLOG)
        self.inbound = inbound
        self.listener = Listener(inbound.max_connections_per_listener)

    async def start(self) -> None:
        await web.BaseSite.start(self)
        server = self._runner.server
        assert server is not None

        def factory() -> _Guard:
            return _Guard(server, self.listener, self.inbound)

        # (Not loop.create_server: uvloop accepts one connection per turn of
        # the loop; sandboxd.api.accept takes all that wait.)
        socks = await accept.listening(self._host, self._port, self._backlog, self.inbound.header_timeout)
        self._server = accept.Acceptor(socks, factory)
        self._bound_port = socks[0].getsockname()[1] if socks else self._port

    async def stop(self) -> None:
        await super().stop()
        # Connections that have sent nothing have no aiohttp handler for the
        # runner's shutdown to close: closed here, with nothing in flight to lose.
        for g in [g for g in GUARDS.values() if g.listener is self.listener and g.inner is None]:
            if g.transport is not None:
                g.transport.abort()
