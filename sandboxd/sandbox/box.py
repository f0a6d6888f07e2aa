"""One warm box: its agent process, its cgroup, and the run protocol.

A box is built once (namespaces, read-only rootfs, tmpfs work areas) by the
agent; each run then costs one message, a fork+exec in the box, and one reply.
Between runs `reset()` gives the box fresh tmpfs work areas and the cgroup a
clean slate, so nothing of one job survives into the next.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import signal
import socket
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sandboxd.rootfs.mounts import Rootfs
from sandboxd.sandbox import agentproto as proto
from sandboxd.sandbox import boxfiles
from sandboxd.sandbox.agentchan import WATCH_AFTER, AgentDied, BoxError, Capture, Channel, check_reply, output_pipe
from sandboxd.sandbox.cgroups import BoxCgroup, RunCgroup
from sandboxd.sandbox.classify import classify
from sandboxd.schema import MAX_FILES_OUT_BYTES, RunRequest, RunResult

log = logging.getLogger(__name__)

DEFAULT_ENV = {
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "HOME": "/box",
    "TMPDIR": "/tmp",
    "LANG": "C.UTF-8",
    "LC_ALL": "C.UTF-8",
}
# (stdin, stdout) or (stdin, stdout, stderr) fds a caller hands to a run.
Stdio = tuple[int, int] | tuple[int, int, int]
_DEVNULL = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
# How a run's box is reset after it (the RUN flag): in its reply, or right behind it.
RESET_AFTER, RESET_BEHIND = proto.F_RESET_AFTER, proto.F_RESET_BEHIND
Reply = asyncio.Future[tuple[bytes, list[int]]]  # one message from the agent, with its fds


@dataclass(frozen=True)
class BoxSpec:
    rootfs: Rootfs
    agent: Path
    seccomp: bytes
    newroot: Path  # an empty host directory the agent mounts the box root on
    box_bytes: int = 256 << 20
    tmp_bytes: int = 64 << 20
    shm_bytes: int = 64 << 20
    hostname: str = "sandbox"
    # cgroup v2: runs born in their leaf (clone3 CLONE_INTO_CGROUP) where the
    # agent finds it works.  seccomp must then let clone3 through for the
    # worker (seccomp.compile_default(worker_clone3=True)), and guard_clone3
    # be set: the agent stacks a filter hiding clone3 on every run's program.
    clone_into: bool = False
    guard_clone3: bool = False


class Box:
    def __init__(self, name: str, uid: int, spec: BoxSpec, cg: BoxCgroup) -> None:
        self.name = name
        self.uid = uid
        self.spec = spec
        self.cg = cg
        self.proc: subprocess.Popen[bytes] | None = None
        self.chan: Channel | None = None
        self.boxfd = -1
        self.runs = 0
        self.clone_into = False  # the agent said READY_CLONE_INTO
        self.broken: str | None = None  # why this box must not be reused
        # The last run's reply said the agent reset the box and its cgroup
        # needs nothing more: the pool may hand it out again without reset().
        self.fresh = False
        self._agent_reset = False  # ... and only the cgroup's between-runs step is left
        # The last run asked the agent to reset right after its RESULT
        # (F_RESET_BEHIND): the READY (or ERROR) that reset sends, awaited by
        # reset() instead of a RESET round trip of its own.
        self._behind: Reply | None = None

    @classmethod
    async def create(cls, name: str, uid: int, spec: BoxSpec, cg: BoxCgroup) -> Box:
        box = cls(name, uid, spec, cg)
        try:
            await box._start()
        except BaseException:
            await box.close()
            raise
        return box

    async def _start(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            # Room for the largest run request (argv+env are capped well below).
            ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 2 * proto.MAX_MSG)
            self.proc = subprocess.Popen(
                [str(self.spec.agent), str(os.getpid()), str(theirs.fileno()), *_agent_mode(self.spec)],
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                env={},
                cwd="/",
            )
        finally:
            theirs.close()
        self.chan = Channel(ours)
        cfg = proto.encode_config(
            self.uid,
            self.uid,
            self.spec.seccomp,
            self.spec.box_bytes,
            self.spec.tmp_bytes,
            self.spec.shm_bytes,
            str(self.spec.newroot),
            self.spec.hostname,
            self.spec.rootfs.ops(self.uid, self.uid),
            proto.C_GUARD_CLONE3 if self.spec.guard_clone3 else 0,
        )
        data, fds = await self.chan.request(cfg)
        check_reply(data, fds, proto.MSG_READY)
        self.clone_into = proto.ready_flags(data) & proto.READY_CLONE_INTO != 0
        self.boxfd = fds[0]

    @property
    def alive(self) -> bool:
        """False once the agent is known to be gone (socket closed or exited)."""
        return self.chan is not None and self.chan.dead is None and self.proc is not None and self.proc.poll() is None

    async def reset(self) -> None:
        """Empty /box, /tmp, /dev/shm, /dev/mqueue; no process or SysV object
        left; accounting cleared."""
        assert self.chan is not None
        self.fresh = False
        if self._agent_reset:
            # The last run's reply said the agent reset the box already; its
            # cgroup wanted more than finish() does (v1: force_empty).
            self._agent_reset = False
            self.cg.between_runs()
            return
        behind, self._behind = self._behind, None
        if behind is not None:
            data, fds = await behind  # the agent began it right after the run's RESULT
        else:
            data, fds = await self.chan.request(proto.KIND.pack(proto.MSG_RESET))
        check_reply(data, fds, proto.MSG_READY)
        self._take_boxfd(fds)
        # After the tmpfs is emptied: its pages were charged to the box's cgroup.
        self.cg.between_runs()

    def _take_boxfd(self, fds: list[int]) -> None:
        if fds:
            # The agent replaced /box with a fresh tmpfs (what the job left
            # could not be emptied in place): files go through the new root.
            os.close(self.boxfd)
            self.boxfd = fds[0]
            for fd in fds[1:]:
                os.close(fd)

    async def run(
        self,
        req: RunRequest,
        stdio: Stdio | None = None,
        control: RunControl | None = None,
        *,
        then_reset: bool = False,
        reset_behind: bool = False,
        room: boxfiles.Room | None = None,
    ) -> RunResult:
        """Run one program.  Raises AgentDied if the agent vanished before the
        run started (the caller may retry on another box).

        stdio: (stdin, stdout) fds to hand to the program instead of req.stdin
        and a captured stdout (interactive problems), or (stdin, stdout, stderr)
        (live sessions: the caller reads both and enforces the output limit);
        always closed here.  control: signals the run while it runs.
        then_reset: the box goes back to a pool after this run: the agent
        resets it before replying (not when files_out are still to be read),
        and `fresh` tells whether it did.  reset_behind (when not then_reset):
        the box goes back to a pool and reset() is next: the agent starts that
        reset as soon as it has sent the result, and reset() only awaits its
        READY (no RESET message, issue 18).  room: asked before each file out
        is read (boxfiles.read_files_out: the daemon's memory budget)."""
        owned: list[int] = list(stdio) if stdio else []
        reset = RESET_AFTER if then_reset else RESET_BEHIND if reset_behind else 0
        try:
            return await self._run(req, stdio, owned, control, 0 if req.files_out else reset, room)
        finally:
            for fd in owned:
                os.close(fd)

    async def _run(
        self,
        req: RunRequest,
        stdio: Stdio | None,
        owned: list[int],
        control: RunControl | None,
        reset: int,
        room: boxfiles.Room | None,
    ) -> RunResult:
        assert self.chan is not None
        chan = self.chan
        if self._behind is not None:
            await self.reset()  # (a caller running again without releasing the box: the reset is due first)
        lim = req.limits
        self.runs += 1
        self.fresh = self._agent_reset = False
        for f in req.files_in:
            boxfiles.write_in(self.boxfd, f.path, f.content, f.executable, self.uid, self.uid)
        rc = self.cg.prepare(lim.memory, lim.procs, self.clone_into)
        stdin_fd, out_r, out_w = _open_stdio(req.stdin, stdio, owned)
        if stdin_fd != _DEVNULL and not stdio and len(req.stdin) >= STDIN_THREAD_FROM:
            # (on a dup, which the thread closes: a cancelled run closes stdin_fd under it harmlessly)
            await asyncio.to_thread(_fill, os.dup(stdin_fd), req.stdin, True)
        if stdio is not None and len(stdio) == 3:
            err_r, err_w = -1, stdio[2]
        else:
            err_r, err_w = output_pipe()
            owned.append(err_w)
        stop = _Stop(chan)
        out = Capture(out_r, lim.output, stop, chan.loop)
        err = Capture(err_r, lim.output, stop, chan.loop)
        msg = _run_message(req, proto.F_HAS_CPU_FD | reset | (proto.F_INTO_CGROUP if rc.into else 0))
        fds = [stdin_fd, out_w, err_w, rc.cpu_fd, *rc.join_fds]
        fut, self._behind = _send_run(chan, msg, fds, owned, rc, out, err, reset)
        watch = chan.loop.call_later(WATCH_AFTER, _watch, out, err)
        if control is not None:
            control.attach(stop)
        try:
            res = await _run_result(fut, out, err, stop, self._take_boxfd)
        except (AgentDied, BoxError) as e:
            out.close()
            err.close()
            self.broken = str(e)
            return RunResult(status="internal_error", message=f"the box failed during the run: {e}")
        finally:
            watch.cancel()
            if control is not None:
                control.attach(None)
            if not out.done.done() or not err.done.done():
                out.close()
                err.close()
        result = self._finish(req, res, rc, out, err, stop.killed)
        if req.files_out:
            lim = req.limits
            # On a thread: os.read of up to 64 MiB of files held the event loop
            # (and /healthz) 360 ms; room(), the budget's, is still asked on the loop.
            read = functools.partial(boxfiles.read_files_out, self.boxfd, req.files_out, lim.file_size)
            result.files = await asyncio.to_thread(read, MAX_FILES_OUT_BYTES, _asked_on_loop(room))
        return result

    def _finish(
        self, req: RunRequest, res: proto.AgentResult, rc: RunCgroup, out: Capture, err: Capture, killed: bool
    ) -> RunResult:
        """The run's result, once every process of it is gone and its output read."""
        reset = bool(res.flags & proto.R_RESET_DONE)
        rc.born_in = bool(res.flags & proto.R_BORN_IN_CGROUP)
        mem = self.cg.finish(rc, reset)
        if res.flags & proto.R_LEFTOVERS:
            self.broken = "processes survived SIGKILL"
        result = classify(res, mem, out, err, req, killed)
        self._agent_reset = reset
        self.fresh = reset and self.cg.settled
        return result

    async def close(self) -> None:
        behind, self._behind = self._behind, None
        if behind is not None and behind.done() and not behind.cancelled():
            behind.exception()  # (retrieved: a broken box's pending reset is not news)
        if self.chan is not None:
            self.chan.close()
        if self.boxfd >= 0:
            os.close(self.boxfd)
            self.boxfd = -1
        if self.proc is not None:
            # The outer agent; the inner one (PID 1 of the box) follows it via
            # PDEATHSIG, and with it every process of the box.
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGKILL)
            await asyncio.get_running_loop().run_in_executor(None, self.proc.wait)
            self.proc = None
        await self.cg.remove()


class _Stop:
    """Kills the run, once: its output went over the limit, or the caller gave up."""

    __slots__ = ("chan", "killed")

    def __init__(self, chan: Channel) -> None:
        self.chan = chan
        self.killed = False

    def __call__(self) -> None:
        if not self.killed:
            self.killed = True
            with contextlib.suppress(AgentDied):
                self.chan.send(proto.KIND.pack(proto.MSG_KILL))


class RunControl:
    """A run in progress, signalled from outside its await (a live session's
    client: Ctrl-C, kill).  Attached by Box.run while the agent runs it; a
    signal before or after that is dropped (there is no process to get it)."""

    __slots__ = ("_stop", "on_start")

    def __init__(self, on_start: Callable[[], None] | None = None) -> None:
        self._stop: _Stop | None = None
        self.on_start = on_start  # called once the agent has the run

    def attach(self, stop: _Stop | None) -> None:
        self._stop = stop
        if stop is not None and self.on_start is not None:
            self.on_start()

    @property
    def running(self) -> bool:
        return self._stop is not None

    def signal(self, signo: int) -> None:
        """To every process of the run (the agent takes only terminal signals)."""
        if self._stop is not None:
            with contextlib.suppress(AgentDied):
                self._stop.chan.send(proto.SIGNAL.pack(proto.MSG_SIGNAL, signo))

    def kill(self) -> None:
        """End the run now, as a cancelled one."""
        if self._stop is not None:
            self._stop()


# Stdin this large is written into its memfd on a thread (os.write gives up the
# GIL): 48 MiB written on the event loop stopped it (and /healthz) for tens of
# ms, more on a busy host, while the page cache allocated it.  Below, inline:
# the per-run path of a common run pays nothing for this.
STDIN_THREAD_FROM = 1 << 20


def _fill(fd: int, data: bytes | memoryview, close: bool = False) -> None:
    try:
        os.write(fd, data)  # memfd: no short writes
        os.lseek(fd, 0, os.SEEK_SET)  # (a dup shares the offset)
    finally:
        if close:
            os.close(fd)


def _watch(out: Capture, err: Capture) -> None:
    out.watch()
    err.watch()


def _open_stdio(stdin: bytes | memoryview, stdio: Stdio | None, owned: list[int]) -> tuple[int, int, int]:
    """(stdin, stdout's read end or -1 when not captured, stdout's write end)
    for a run; what the agent gets a copy of goes on `owned`, closed once sent."""
    if stdio:
        return stdio[0], -1, stdio[1]
    stdin_fd = _DEVNULL
    if stdin:
        stdin_fd = os.memfd_create("stdin", os.MFD_CLOEXEC)
        owned.append(stdin_fd)
        if len(stdin) < STDIN_THREAD_FROM:
            _fill(stdin_fd, stdin)  # (a large one is filled on a thread: Box._run)
    out_r, out_w = output_pipe()
    owned.append(out_w)
    return stdin_fd, out_r, out_w


def _agent_mode(spec: BoxSpec) -> list[str]:
    return ["clone-into-cgroup"] if spec.clone_into else []


def _run_message(req: RunRequest, flags: int) -> bytes:
    lim = req.limits
    env = req.env if req.env is not None else DEFAULT_ENV
    return proto.encode_run(
        flags,
        int(lim.cpu_time * 1e9),
        int(lim.wall * 1e9),
        lim.file_size or 1,
        lim.stack or lim.memory,
        lim.open_files,
        0,
        req.cwd,
        req.cmd,
        [f"{k}={v}" for k, v in env.items()],
    )


def _send_run(
    chan: Channel,
    msg: bytes,
    fds: list[int],
    owned: list[int],
    rc: RunCgroup,
    out: Capture,
    err: Capture,
    reset: int,
) -> tuple[Reply, Reply | None]:
    """Hand the run to the agent; returns the futures of its RESULT and,
    with RESET_BEHIND, of the READY (or ERROR) of the reset behind it."""
    try:
        fut = chan.expect()
        # (before the send: the READY may follow the RESULT within one loop pass)
        behind = chan.expect() if reset == RESET_BEHIND else None
        chan.send(msg, fds)
    except BaseException:
        out.close()
        err.close()
        raise
    finally:
        # The agent holds its own copies now; ours must go so that EOF
        # reaches the readers when the run's processes exit.
        for fd in owned:
            os.close(fd)
        owned.clear()
        rc.close_fds()
    return fut, behind


async def _run_result(
    fut: Reply,
    out: Capture,
    err: Capture,
    stop: _Stop,
    take_boxfd: Callable[[list[int]], None],
) -> proto.AgentResult:
    """The agent's result, and the run's output read to its end."""
    try:
        data, fds = await asyncio.shield(fut)
    except asyncio.CancelledError:
        # Cancelled by our caller: stop the run, keep the box consistent
        # (a /box fd its reset sent must replace ours even so).
        stop()
        data, fds = await fut
        if proto.KIND.unpack_from(data)[0] == proto.MSG_RESULT:
            take_boxfd(fds)
        raise
    check_reply(data, fds, proto.MSG_RESULT)
    take_boxfd(fds)
    res = proto.decode_result(data)
    # Every process of the run is dead now, so the pipes are at EOF.
    if not (out.drain() and err.drain()):
        _watch(out, err)
        await asyncio.gather(out.done, err.done)
    return res


def _asked_on_loop(room: boxfiles.Room | None) -> boxfiles.Room | None:
    """room(n) for a thread to call: answered on the event loop, whose state it reads and changes."""
    if room is None:
        return None
    loop, ask = asyncio.get_running_loop(), room

    async def answer(n: int) -> str | None:
        return ask(n)

    return lambda n: asyncio.run_coroutine_threadsafe(answer(n), loop).result()
