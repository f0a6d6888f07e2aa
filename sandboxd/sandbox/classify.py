"""A run's outcome: the agent's result and the cgroup's memory figures
turned into one status (which limit was hit, or how the program ended)."""

from __future__ import annotations

import os
import signal
from typing import Protocol

from sandboxd.sandbox import agentproto as proto
from sandboxd.sandbox.memstat import MemoryUse
from sandboxd.schema import RunRequest, RunResult, Status


class Captured(Protocol):
    """One output stream of a run, as read (up to its limit)."""

    @property
    def data(self) -> bytes: ...

    @property
    def truncated(self) -> bool: ...


def classify(
    res: proto.AgentResult,
    mem: MemoryUse,
    out: Captured,
    err: Captured,
    req: RunRequest,
    output_killed: bool,
) -> RunResult:
    """The run's status from what the agent and the cgroup saw: the first
    limit that explains how it ended wins."""
    lim = req.limits
    ws = res.wstatus
    exit_code = os.waitstatus_to_exitcode(ws) if os.WIFEXITED(ws) else None
    sig = os.WTERMSIG(ws) if os.WIFSIGNALED(ws) else None
    cpu = res.cpu_ns / 1e9
    status: Status
    message = ""
    stderr = err.data
    if res.flags & proto.R_SETUP_FAILED:
        status = "internal_error"
        message = f"setting up the run failed: {os.strerror(res.err)}"
        exit_code = sig = None
    elif out.truncated or err.truncated:
        status = "output_limit"
    elif mem.oom_kill:
        status = "memory_limit"
    elif res.flags & proto.R_CPU_LIMIT or cpu >= lim.cpu_time or sig == signal.SIGXCPU:
        status = "time_limit"
    elif res.flags & proto.R_WALL_LIMIT:
        status = "time_limit"
        message = "wall time limit"
    elif res.flags & proto.R_CANCELLED:
        status = "internal_error"
        message = "cancelled"
    elif res.flags & proto.R_EXEC_FAILED:
        status = "nonzero_exit"
        exit_code, sig = 127, None
        message = f"cannot execute {req.cmd[0]!r}: {os.strerror(res.err)}"
        stderr += f"sandboxd: {message}\n".encode()
    elif sig == signal.SIGSYS:
        status = "bad_syscall"
    elif sig == signal.SIGXFSZ:
        status = "output_limit"
        message = "file size limit"
    elif (sig is not None or exit_code) and (mem.oom or mem.peak >= lim.memory):
        # Hit the ceiling and failed (a charge the kernel refused): a judge's
        # MLE.  Page cache is not in mem.peak: a limit full of it is no
        # failure, the kernel reclaims it (sandboxd/sandbox/memstat.py).
        status = "memory_limit"
    elif sig is not None:
        status = "signaled"
    elif exit_code:
        status = "nonzero_exit"
    else:
        status = "ok"
    return RunResult(
        status=status,
        exit_code=exit_code,
        signal=sig,
        cpu_time=round(cpu, 6),
        wall_time=round(res.wall_ns / 1e9, 6),
        memory=mem.peak or res.maxrss_kb * 1024,
        stdout=out.data,
        stderr=stderr,
        stdout_truncated=out.truncated,
        stderr_truncated=err.truncated,
        message=message,
    )
