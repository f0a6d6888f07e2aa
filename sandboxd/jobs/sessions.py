"""Live sessions: one program in a warm box, stdin in and stdout/stderr out as
they happen (docs/sessions.md).  Transport-free: the WebSocket endpoints
(sandboxd/api/sessions.py, Piston's /api/v2/connect) drive a `LiveSession`
and give it a `Peer` to send to.

Every run limit applies (cpu, memory, pids through the box's cgroup; the
output limit here, total bytes across stdout and stderr, since the box does
not capture a session's pipes); the wall time limit is the session's maximum
length; an idle timer ends a session with no stdin and no output.  Buffers are
bounded both ways: `write` queues at most STDIN_BUFFER bytes beyond the pipe
into the box and then waits (so the transport stops reading its client; a
control message behind less than that is still read: Ctrl-C works while the
program ignores its stdin), and the pumps wait on `Peer.output` (the
transport's send buffer) before reading the box's pipes again.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import msgspec

from sandboxd import errors
from sandboxd.config import SessionsSettings
from sandboxd.engine.engine import Compiled, Engine
from sandboxd.engine.scheduler import QueueDeadline, QueueFull
from sandboxd.jobs.tenants import CALLER, Charge, Tenants
from sandboxd.sandbox.box import RunControl
from sandboxd.schema import FileIn, Limits, RunResult, SchemaError
from sandboxd.sessionschema import SessionSignalName, SessionStart

STDOUT, STDERR = 1, 2
_CHUNK = 1 << 16
STDIN_BUFFER = 1 << 16  # client bytes queued beyond the pipe into the box
SIGNALS: dict[SessionSignalName, int] = {
    "INT": signal.SIGINT,
    "TERM": signal.SIGTERM,
    "HUP": signal.SIGHUP,
    "QUIT": signal.SIGQUIT,
    "USR1": signal.SIGUSR1,
    "USR2": signal.SIGUSR2,
    "KILL": signal.SIGKILL,
}
# Why a session ended (the result message's "reason", a metrics label).
REASONS = ("exit", "compile_error", "killed", "idle", "max_session", "output_limit", "closed", "error")


class Peer(Protocol):
    """Where a session's events go (a WebSocket)."""

    async def output(self, stream: int, data: bytes) -> None:
        """Send program output; returns once the transport can take more."""

    async def event(self, msg: dict[str, Any]) -> None:
        """Send a control message (compiled, started)."""


@dataclass
class Ended:
    result: RunResult
    reason: str
    compiled: RunResult | None = None


def _used(ended: Ended | None) -> RunResult | None:
    """What a session's tenant is charged for: its run, plus its compile."""
    if ended is None:
        return None
    if ended.compiled is None or ended.compiled is ended.result:
        return ended.result
    return msgspec.structs.replace(ended.result, cpu_time=ended.result.cpu_time + ended.compiled.cpu_time)


def result_dict(res: RunResult) -> Any:
    """A RunResult as JSON-ready builtins (bytes as base64, like /v1/runs)."""
    return msgspec.to_builtins(res)


class Sessions:
    """This daemon's live sessions: the cap, the settings, the counts."""

    def __init__(self, engine: Engine, settings: SessionsSettings, on_end: Callable[[str], None] | None = None) -> None:
        self.engine = engine
        self.settings = settings
        self.cap = settings.max_sessions or max(1, engine.cfg.pool_size // 2)
        self.active = 0
        self.on_end = on_end
        # The daemon's tenants (read at each open: the admin API may replace them);
        # None: no tenant limits (an engine without a Service).
        self.tenants: Callable[[], Tenants] | None = None
        # A fleet host's: a proxied session's CPU seconds to the fleet tenant it
        # ran for (Caller.billed), when it ends.  None: not in a fleet.
        self.bill: Callable[[str, float], None] | None = None

    def open(self, start: SessionStart, compile_limits: Limits | None = None) -> LiveSession:
        """A session for `start`, counted against the cap and the calling tenant's
        limits (its languages, concurrency, rate, CPU quota: a session is one job of
        its tenant); ServiceError when full (queue_full + retry_after), refused for
        the tenant (forbidden, rate_limited) or the language is unknown (bad_request)."""
        try:
            self.engine.language(start.language)
        except SchemaError as e:
            raise errors.error("bad_request", str(e).replace("lang:", "language:", 1)) from None
        if self.active >= self.cap:
            why = f"{self.active} live sessions, the most this daemon runs at once (sessions.max_sessions); retry later"
            raise errors.error("queue_full", why, self.settings.queue_wait)
        charge = None if self.tenants is None else self.tenants().admit(start.language, None)[0]
        caller = CALLER.get()
        self.active += 1
        session = LiveSession(self, start, compile_limits, charge)
        session.billed = "" if caller is None or self.bill is None else caller.billed
        return session

    def _closed(self, reason: str) -> None:
        self.active -= 1
        if self.on_end is not None:
            self.on_end(reason)


class LiveSession:
    def __init__(
        self, owner: Sessions, start: SessionStart, compile_limits: Limits | None = None, charge: Charge | None = None
    ) -> None:
        self.owner = owner
        self.charge = charge  # its tenant's hold: released, with the CPU used, when the session ends
        self.billed = ""  # the fleet tenant its CPU is billed to when it ends (Sessions.bill)
        self.start = start
        self.compile_limits = compile_limits  # None: the language's (Piston's init may set them)
        s = owner.settings
        self.idle = min(start.idle_timeout or s.idle_timeout, s.idle_timeout)
        self._started = asyncio.Event()  # the box has the run (stdin may flow)
        self._announced = asyncio.Event()  # "started" is sent (output may follow)
        self._ran = False
        # The client's stdin, queued for the pipe into the box (None: eof), so that
        # its control messages are read while the program is slow to read stdin.
        self._stdin: deque[bytes | None] = deque()
        self._queued = 0
        self._room = asyncio.Event()
        self._more = asyncio.Event()
        self.control = RunControl(self._on_start)
        self.reason = ""
        self.last = time.monotonic()
        self.sent = 0  # output bytes, stdout and stderr together
        self.truncated: set[int] = set()
        self.limit = 0
        self._in_w = -1
        self._done = False

    def _on_start(self) -> None:
        self._ran = True
        self._started.set()

    # --- what the client sends --------------------------------------------

    async def write(self, data: bytes) -> None:
        """Program stdin; waits while STDIN_BUFFER bytes are queued for the pipe
        into the box (the transport then stops reading its client)."""
        self.last = time.monotonic()
        while self._queued >= STDIN_BUFFER and not self._done:
            self._room.clear()
            await self._room.wait()
        if not self._done:
            self._stdin.append(data)
            self._queued += len(data)
            self._more.set()

    async def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view and self._in_w >= 0:
            try:
                n = os.write(self._in_w, view)
            except BlockingIOError:
                await _wait_fd(self._in_w, writable=True)
                continue
            except OSError:  # the program closed its stdin or exited: what it did not read is dropped
                return
            view = view[n:]
        self.last = time.monotonic()

    def eof(self) -> None:
        """Close stdin once what was written before is in."""
        self._stdin.append(None)
        self._more.set()

    def signal(self, name: SessionSignalName) -> None:
        if name == "KILL":
            self.reason = self.reason or "killed"
        self.control.signal(SIGNALS[name])

    def kill(self) -> None:
        self.signal("KILL")

    def abandon(self) -> None:
        """The client went away: end the run now."""
        self.reason = self.reason or "closed"
        self.control.kill()

    # --- the run ---------------------------------------------------------

    async def run(self, peer: Peer) -> Ended:
        """Compile if asked, run, stream; the session's result.  Always releases
        its place under the cap."""
        ended: Ended | None = None
        try:
            ended = await self._run(peer)
        except (QueueFull, QueueDeadline) as e:
            self.reason = self.reason or "error"
            wait = self.owner.settings.queue_wait
            raise errors.error(
                "queue_full", f"no free box within sessions.queue_wait ({wait:g} s): {e}", wait
            ) from None
        except BaseException:
            self.reason = self.reason or "error"
            raise
        finally:
            self._done = True
            self._close_stdin()
            self.owner._closed(self.reason or "error")
            used = _used(ended)
            if self.charge is not None:
                self.charge.close(used)
            if self.billed and used is not None and self.owner.bill is not None:
                self.owner.bill(self.billed, used.cpu_time)
        self.reason = ended.reason
        return ended

    async def _compile(self) -> Compiled:
        eng, st = self.owner.engine, self.start
        lang = eng.language(st.language)
        files = list(st.files)
        source = st.source.encode() if st.source is not None else b""
        if st.source is None:
            # The whole program is in files: its main file is the language's source file.
            main = next((f for f in files if f.path == lang.source), None)
            if main is not None:
                files.remove(main)
                source = main.content
        wants = st.compile if st.compile is not None else lang.compile is not None
        if not wants:
            return Compiled(lang, None, [FileIn(lang.source, source), *files])
        return await eng.compile(st.language, source, files, limits=self.compile_limits, deadline=self._deadline())

    def _deadline(self) -> float:
        return time.monotonic() + self.owner.settings.queue_wait

    async def _run(self, peer: Peer) -> Ended:
        comp = await self._compile()
        if comp.result is not None:
            await peer.event({"type": "compiled", "result": result_dict(comp.result)})
            if not comp.ok:
                return Ended(comp.result, "compile_error", comp.result)
        lang = comp.lang
        base = self.start.limits or lang.default_limits
        max_len = self.owner.settings.max_length
        lim = msgspec.structs.replace(base, wall_time=min(base.wall_time or max_len, max_len))
        self.limit = lang.fit(lim).output
        in_r, self._in_w = os.pipe2(os.O_CLOEXEC)
        out_r, out_w = os.pipe2(os.O_CLOEXEC)
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        for fd in (self._in_w, out_r, err_r):
            os.set_blocking(fd, False)
        run = asyncio.ensure_future(
            self.owner.engine.run_compiled(
                comp,
                limits=lim,
                args=self.start.argv,
                deadline=self._deadline(),
                stdio=(in_r, out_w, err_w),
                control=self.control,
            )
        )
        pumps = [asyncio.ensure_future(self._pump(fd, stream, peer)) for fd, stream in ((out_r, 1), (err_r, 2))]
        helpers = [asyncio.ensure_future(self._watch(peer, run)), asyncio.ensure_future(self._feed())]
        try:
            res = await asyncio.shield(run)
            await asyncio.gather(*pumps)
        finally:
            self._done = True
            self._room.set()  # (wakes a writer still waiting: the run is over)
            if not run.done():
                self.abandon()
                with contextlib.suppress(BaseException):
                    await run
            for t in (*helpers, *pumps):
                t.cancel()
            with contextlib.suppress(BaseException):
                await asyncio.gather(*pumps, *helpers, return_exceptions=True)
            for fd in (out_r, err_r):
                _close_quietly(fd)
        return Ended(self._explain(res), self._reason(res), comp.result)

    async def _watch(self, peer: Peer, run: asyncio.Future[RunResult]) -> None:
        """`started` once the box runs the program, then the idle timer."""
        try:
            started: asyncio.Future[Any] = asyncio.ensure_future(self._started.wait())
            await asyncio.wait([started, run], return_when=asyncio.FIRST_COMPLETED)
            started.cancel()
            if not self._ran:
                return
            await peer.event({"type": "started"})
        finally:
            self._announced.set()
        self.last = time.monotonic()
        while not run.done():
            left = self.last + self.idle - time.monotonic()
            if left <= 0:
                self.reason = self.reason or "idle"
                self.control.kill()
                return
            await asyncio.sleep(min(left, 1.0))

    async def _pump(self, fd: int, stream: int, peer: Peer) -> None:
        """One output pipe to the peer, within the session's output limit."""
        await self._announced.wait()
        while True:
            try:
                data = os.read(fd, _CHUNK)
            except BlockingIOError:
                await _wait_fd(fd, writable=False)
                continue
            if not data:
                return
            room = self.limit - self.sent
            if len(data) > room:
                data = data[:room]
                self.truncated.add(stream)
                self.reason = self.reason or "output_limit"
                self.control.kill()
            self.sent += len(data)
            self.last = time.monotonic()
            if data:
                await peer.output(stream, data)
            if stream in self.truncated:
                return  # (the run is being killed: the rest is not read)

    async def _feed(self) -> None:
        """Stdin into the box once it runs: the start's, then the client's queue."""
        await self._started.wait()
        if self.start.stdin:
            await self._write(self.start.stdin.encode())
        while True:
            while self._stdin:
                item = self._stdin.popleft()
                if item is None:
                    self._close_stdin()
                    continue
                await self._write(item)
                self._queued -= len(item)
                self._room.set()
            self._more.clear()
            await self._more.wait()

    def _close_stdin(self) -> None:
        if self._in_w >= 0:
            fd, self._in_w = self._in_w, -1
            _close_quietly(fd)

    def _explain(self, res: RunResult) -> RunResult:
        """The result as a run's: the limits this side enforces named like the box's."""
        if self.truncated:
            res.status = "output_limit"
            res.stdout_truncated = STDOUT in self.truncated
            res.stderr_truncated = STDERR in self.truncated
            res.message = ""
        elif self.reason == "idle":
            res.status, res.message = "time_limit", f"idle timeout: no input or output for {self.idle:g} s"
        elif self.reason == "closed":
            res.status, res.message = "internal_error", "cancelled: the client closed the session"
        return res

    def _reason(self, res: RunResult) -> str:
        if self.reason:
            return self.reason
        if res.status == "time_limit" and res.message == "wall time limit":
            return "max_session"
        return "exit"


async def _wait_fd(fd: int, writable: bool) -> None:
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[None] = loop.create_future()

    def ready() -> None:
        if not fut.done():
            fut.set_result(None)

    add, remove = (loop.add_writer, loop.remove_writer) if writable else (loop.add_reader, loop.remove_reader)
    add(fd, ready)
    try:
        await fut
    finally:
        remove(fd)


def _close_quietly(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)


SessionHandler = Callable[[SessionStart, Peer], Awaitable[Ended]]
