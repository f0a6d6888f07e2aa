"""Listening sockets whose waiting connections are accepted all at once
(the HTTP ports and the Unix socket).

uvloop (libuv underneath) accepts one connection per turn of the event loop
(measured: 400 queued connections took 402 turns).  Under load a turn is
long, every readable socket served in it: 20 uploads arriving took ~22 ms a
turn, so 500 connections opened at once (issue 13's half-open load) drained
at ~45 a second and a /healthz probe queued behind them waited 1-2.5 s
while the loop itself never stalled past ~100 ms.  Here each turn in which
a listening socket is readable accepts up to ACCEPT_BATCH connections (as
asyncio's own selector loop does), each then set up by the loop as its own
(`connect_accepted_socket`: the same transport uvloop's server makes).

TCP listeners defer accepting (TCP_DEFER_ACCEPT) until a connection's first
bytes arrive: a connection that sends nothing waits in the kernel (a SYN-queue
entry, no descriptor, nothing of the loop) instead of in the accept queue
ahead of a /healthz probe that sent its request at once.  With 500 half-open
connections opened at once (issue 13's load) the probe otherwise waited for
every one of them to be accepted and set up, ACCEPT_BATCH a turn.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import math
import socket
from collections.abc import Callable

log = logging.getLogger(__name__)

# Connections accepted per readable turn; more wait for the next turn.  Each
# costs the loop its transport, task and guard when set up (~100-200 us on a
# loaded 2-core host): 256 a turn made turns of 40-60 ms of CPU as 500
# connections arrived at once (sandboxd.app.stallwatch), 32 a few ms, and the
# burst is still in within ~16 turns instead of uvloop's 500.
ACCEPT_BATCH = 32
RETRY_AFTER_ERROR = 1.0  # s without accepting after EMFILE/ENFILE/ENOBUFS (else the loop spins on them)


async def listening(host: str | None, port: int, backlog: int, defer: float = 0) -> list[socket.socket]:
    """Bound, listening, non-blocking sockets for host:port, one per address it
    resolves to (as loop.create_server binds them); OSError as it would raise.
    `defer` > 0: a connection is accepted once its first bytes are in, or once
    it has been silent about that many seconds (the kernel rounds up to its
    SYN-ACK retransmissions, at 1, 3, 7, 15, 31 s), whichever comes first."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    socks: list[socket.socket] = []
    try:
        for family, kind, proto, _name, addr in dict.fromkeys(infos):
            s = socket.socket(family, kind, proto)
            socks.append(s)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)  # (its IPv4 twin is bound apart)
            if defer > 0:
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT, max(1, math.ceil(defer)))
            s.bind(addr)
            s.listen(backlog)
            s.setblocking(False)
    except OSError:
        for s in socks:
            s.close()
        raise
    return socks


def _gone(conn: socket.socket) -> bool:
    """Closed (and then closed here) if the peer has already gone: a deferred
    silent connection surfaces when its client gives up and sends FIN (500
    half-open connections closing at once), and one costs the loop an accept
    and this recv instead of a transport, a task and a guard set up for it."""
    try:
        if conn.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT):
            return False
    except (BlockingIOError, InterruptedError):
        return False  # (silent past the deferral: set up, its header deadline starts now)
    except OSError:
        pass  # (reset)
    conn.close()
    return True


class Acceptor(asyncio.AbstractServer):
    """Serves `factory`'s protocols on listening sockets (listening()), up to
    ACCEPT_BATCH new connections per turn of the loop."""

    def __init__(
        self, socks: list[socket.socket], factory: Callable[[], asyncio.BaseProtocol], what: str = "HTTP"
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.what = what  # (names the listener in the log)
        self.sockets = socks
        self.factory = factory
        self.starting: set[asyncio.Task[object]] = set()
        self.serving = True
        # (TCP: a deferred connection may come with its peer's FIN and nothing else.)
        self.peek = bool(socks) and socks[0].family != socket.AF_UNIX
        for s in socks:
            self.loop.add_reader(s.fileno(), self._accept, s)

    def _accept(self, sock: socket.socket) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                conn, _addr = sock.accept()
            except (BlockingIOError, InterruptedError):
                return  # (none left: the next readable turn brings more)
            except OSError as e:
                if e.errno == errno.ECONNABORTED:
                    continue  # (gone before it was accepted)
                self._pause(sock, e)
                return
            if self.peek and _gone(conn):
                continue
            conn.setblocking(False)
            task = self.loop.create_task(self.loop.connect_accepted_socket(self.factory, conn))
            self.starting.add(task)
            task.add_done_callback(self._started)

    def _started(self, task: asyncio.Task[object]) -> None:
        self.starting.discard(task)
        if not task.cancelled() and task.exception() is not None:  # (a connection reset as it was set up)
            log.debug("an accepted connection failed as it was set up: %s", task.exception())

    def _pause(self, sock: socket.socket, e: OSError) -> None:
        """Out of descriptors or buffers: stop accepting for a while, as asyncio
        does; the waiting connections stay in the kernel's backlog."""
        log.warning("accepting %s connections paused %s s: %s", self.what, RETRY_AFTER_ERROR, e)
        self.loop.remove_reader(sock.fileno())
        self.loop.call_later(RETRY_AFTER_ERROR, self._resume, sock)

    def _resume(self, sock: socket.socket) -> None:
        if self.serving:
            self.loop.add_reader(sock.fileno(), self._accept, sock)

    # --- asyncio.AbstractServer, as aiohttp's sites use it ---

    def close(self) -> None:
        if not self.serving:
            return
        self.serving = False
        for s in self.sockets:
            self.loop.remove_reader(s.fileno())
            s.close()

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self.loop

    def is_serving(self) -> bool:
        return self.serving

    async def start_serving(self) -> None:
        return None  # (serving from the start)

    async def serve_forever(self) -> None:
        raise NotImplementedError("the daemon's listeners are served by its own loop")

    async def wait_closed(self) -> None:
        return None  # (closed at once: nothing of the sockets outlives close())
