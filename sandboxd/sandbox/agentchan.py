"""The daemon's end of one agent: its SOCK_SEQPACKET channel (one message per
packet, fds as SCM_RIGHTS; sandboxd.sandbox.agentproto), and the run's output
pipes read to their limit.  Split from box.py, which drives them."""

from __future__ import annotations

import array
import asyncio
import contextlib
import fcntl
import logging
import os
import socket
from collections import deque
from collections.abc import Callable

from sandboxd.sandbox import agentproto as proto

log = logging.getLogger(__name__)

MAX_FDS = 16  # fds one agent message may carry
# (Plain ints, computed once: the socket module's flags are IntFlag members,
# and each | or & of them builds an enum member: ~1.5 µs a reply, issue 18.)
_ANC_SPACE = socket.CMSG_SPACE(4 * MAX_FDS)
_RECV_FLAGS = int(socket.MSG_CMSG_CLOEXEC)
_TRUNCATED = int(socket.MSG_TRUNC | socket.MSG_CTRUNC)


class AgentDied(Exception):
    """The agent is gone; the box is unusable."""


class BoxError(Exception):
    """The agent refused or failed a request; the box is unusable."""


class Channel:
    """Request/reply over the agent's SOCK_SEQPACKET socket, on the event loop."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.loop = asyncio.get_running_loop()
        # One per reply expected, in order: a run with F_RESET_BEHIND expects
        # its RESULT and then its reset's READY, both before it is sent.
        self.waiters: deque[asyncio.Future[tuple[bytes, list[int]]]] = deque()
        self.dead: Exception | None = None
        sock.setblocking(False)
        self.loop.add_reader(sock.fileno(), self._readable)

    def _readable(self) -> None:
        try:
            # (CLOEXEC: a received /box fd must never reach a process the daemon starts.)
            data, anc, flags, _ = self.sock.recvmsg(proto.MAX_REPLY, _ANC_SPACE, _RECV_FLAGS)
        except BlockingIOError:
            return
        except OSError as e:
            self._fail(AgentDied(f"agent socket: {e}"))
            return
        fds: list[int] = []
        for level, kind, payload in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                a = array.array("i")
                a.frombytes(payload[: len(payload) - len(payload) % a.itemsize])
                fds.extend(a)
        if flags & _TRUNCATED:
            for fd in fds:
                os.close(fd)
            self._fail(AgentDied(f"agent sent a reply over {proto.MAX_REPLY} bytes or {MAX_FDS} fds"))
            return
        if not data:
            self._fail(AgentDied("agent exited"))
            return
        w = self.waiters.popleft() if self.waiters else None
        if w is None or w.done():
            for fd in fds:
                os.close(fd)
            log.warning("unexpected message from agent: %r", data[:64])
            return
        w.set_result((data, fds))

    def _fail(self, exc: Exception) -> None:
        if self.dead is None:
            self.dead = exc
            self.loop.remove_reader(self.sock.fileno())
        while self.waiters:
            w = self.waiters.popleft()
            if not w.done():
                w.set_exception(exc)

    def expect(self) -> asyncio.Future[tuple[bytes, list[int]]]:
        if self.dead is not None:
            raise self.dead
        w = self.loop.create_future()
        self.waiters.append(w)
        return w

    def send(self, data: bytes, fds: list[int] | tuple[int, ...] = ()) -> None:
        if self.dead is not None:
            raise self.dead
        try:
            if fds:
                self.sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
            else:
                self.sock.send(data)
        except OSError as e:
            self._fail(AgentDied(f"agent socket: {e}"))
            raise self.dead from e  # type: ignore[misc]

    async def request(self, data: bytes, fds: list[int] | tuple[int, ...] = ()) -> tuple[bytes, list[int]]:
        fut = self.expect()
        self.send(data, fds)
        return await fut

    def close(self) -> None:
        if self.dead is None:
            self.loop.remove_reader(self.sock.fileno())
            self.dead = AgentDied("box closed")
        self.sock.close()


def check_reply(data: bytes, fds: list[int], want: int) -> None:
    (kind,) = proto.KIND.unpack_from(data)
    if kind == want:
        return
    for fd in fds:
        os.close(fd)
    if kind == proto.MSG_ERROR:
        raise BoxError(data[4:].decode(errors="replace"))
    raise BoxError(f"agent sent message type {kind}, expected {want}")


# A run's output pipes are watched by the event loop from this long into the
# run, not from its start: most runs are over by then (a /bin/true takes 1-3
# ms here, 1 ms caught only 15% of them), and their output, less than
# PIPE_BYTES, is read once their result is in (Capture.drain).  That saves two
# readers added and removed (five syscalls each on uvloop) and two loop
# wake-ups (the pipes' EOFs, just before the result) per run, issue 18.  A
# program writing more than PIPE_BYTES waits at most this long for its first read.
WATCH_AFTER = 0.005
# An output pipe's capacity (F_SETPIPE_SZ, default 64 KiB).  Its pages are
# allocated only as they are written, and charged to the writer's memory
# cgroup: output waiting in a pipe counts in the run's `memory` (memstat.py),
# so a run whose output exceeds 64 KiB may show up to 2 x 192 KiB more than
# when every pipe was read as it filled; not more, to keep that small.
PIPE_BYTES = 256 << 10


def output_pipe() -> tuple[int, int]:
    """(read end, write end) of a run's output pipe, PIPE_BYTES if the kernel allows."""
    r, w = os.pipe2(os.O_CLOEXEC)
    with contextlib.suppress(OSError):  # (a lower pipe-max-size: 64 KiB; more waits for WATCH_AFTER)
        fcntl.fcntl(r, fcntl.F_SETPIPE_SZ, PIPE_BYTES)
    return r, w


class Capture:
    """Reads one output pipe up to a limit; past it, asks for the run to be killed."""

    def __init__(self, fd: int, limit: int, on_overflow: Callable[[], None], loop: asyncio.AbstractEventLoop) -> None:
        self.fd = fd
        self.limit = limit
        self.chunks: list[bytes] = []
        self.size = 0
        self.truncated = False
        self.on_overflow = on_overflow
        self.loop = loop
        self.watched = False
        self.done: asyncio.Future[None] = loop.create_future()
        if fd < 0:  # nothing to capture
            self.done.set_result(None)
            return
        os.set_blocking(fd, False)

    def watch(self) -> None:
        """Read as the program writes (WATCH_AFTER into its run, or when the
        result came while a writer is still alive)."""
        if self.fd >= 0 and not self.watched:
            self.watched = True
            self.loop.add_reader(self.fd, self._readable)

    def _readable(self) -> None:
        try:
            b = os.read(self.fd, 1 << 16)
        except BlockingIOError:
            return
        except OSError:
            b = b""
        self._take(b)

    def drain(self) -> bool:
        """Read to EOF now, without the event loop; False if a writer is still
        alive (then wait for `done`).  After a run's result every process of
        the box is dead, so this is the common case and saves a loop round."""
        while self.fd >= 0:
            try:
                b = os.read(self.fd, 1 << 16)
            except BlockingIOError:
                return False
            except OSError:
                b = b""
            self._take(b)
        return True

    def _take(self, b: bytes) -> None:
        if not b:
            self.close()
            return
        if not self.truncated:
            room = self.limit - self.size
            if len(b) > room:
                self.chunks.append(b[:room])
                self.size = self.limit
                self.truncated = True
                self.on_overflow()
            else:
                self.chunks.append(b)
                self.size += len(b)

    def close(self) -> None:
        if self.fd >= 0:
            if self.watched:
                self.loop.remove_reader(self.fd)
            os.close(self.fd)
            self.fd = -1
        if not self.done.done():
            self.done.set_result(None)

    @property
    def data(self) -> bytes:
        return b"".join(self.chunks)
