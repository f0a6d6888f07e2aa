"""The daemon <-> agent wire format (mirror of sandboxd/sandbox/agent/agent.c).

SOCK_SEQPACKET, one message per packet, native byte order, fds as SCM_RIGHTS.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

MSG_CONFIG = 1
MSG_RUN = 2
MSG_RESET = 3
MSG_KILL = 4
MSG_SIGNAL = 5  # u32 signo: to every process of the run (live sessions)
MSG_READY = 100
MSG_RESULT = 101
MSG_ERROR = 102

# RESULT flags
R_CPU_LIMIT = 1
R_WALL_LIMIT = 2
R_CANCELLED = 4
R_EXEC_FAILED = 8
R_LEFTOVERS = 16
R_SETUP_FAILED = 32
R_RESET_DONE = 64  # F_RESET_AFTER honoured: the box is reset (a new /box fd rides along)
R_BORN_IN_CGROUP = 128  # F_INTO_CGROUP honoured: clone3(CLONE_INTO_CGROUP) placed the run

# RUN flags
F_HAS_CPU_FD = 1
F_RESET_AFTER = 2  # reset before replying (no RESET round trip); the agent may decline
F_INTO_CGROUP = 4  # the one join fd is the run's cgroup v2 directory (clone3 CLONE_INTO_CGROUP)
F_RESET_BEHIND = 8  # reset right after RESULT, as on a RESET: no RESET sent, its READY (or ERROR) follows

# READY flags (the uint32 after the type)
READY_CLONE_INTO = 1  # the agent places runs with clone3(CLONE_INTO_CGROUP): pass F_INTO_CGROUP + the leaf's dir

# CONFIG flags
C_GUARD_CLONE3 = 1  # the worker's program allows clone3; each run's program gets it ENOSYS

CONFIG_HDR = struct.Struct("=IIIIQQQII")  # type uid gid seccomp_len box tmp shm flags pad
RUN_HDR = struct.Struct("=IIQQQQQQII")  # type flags cpu wall fsize stack nofile as argc envc
RESULT = struct.Struct("=IIiiQQQ")  # type flags wstatus err cpu_ns wall_ns maxrss_kb
KIND = struct.Struct("=I")
SIGNAL = struct.Struct("=II")  # type signo
READY = struct.Struct("=II")  # type flags

MAX_MSG = 1 << 20
# The agent's replies are small (its largest, an ERROR, is at most 600 bytes:
# agent.c's send_error/die); the daemon's receive buffer is this, not
# MAX_MSG: a 1 MiB recvmsg buffer is an mmap, page faults, mremap and munmap
# per reply, ~35 µs each, twice a run (issue 18).  Longer is a broken agent.
MAX_REPLY = 4096


@dataclass(frozen=True)
class AgentResult:
    flags: int
    wstatus: int
    err: int
    cpu_ns: int
    wall_ns: int
    maxrss_kb: int


def ready_flags(data: bytes) -> int:
    """READY's flags; 0 from an agent that sends the type alone."""
    return READY.unpack_from(data)[1] if len(data) >= READY.size else 0


def encode_config(
    uid: int,
    gid: int,
    seccomp: bytes,
    box_bytes: int,
    tmp_bytes: int,
    shm_bytes: int,
    newroot: str,
    hostname: str,
    ops: list[tuple[str, ...]],
    flags: int = 0,
) -> bytes:
    strings = [newroot, hostname]
    for op in ops:
        strings.extend(op)
    tail = b"".join(s.encode() + b"\0" for s in strings)
    hdr = CONFIG_HDR.pack(MSG_CONFIG, uid, gid, len(seccomp), box_bytes, tmp_bytes, shm_bytes, flags, 0)
    return hdr + seccomp + tail


def encode_run(
    flags: int,
    cpu_ns: int,
    wall_ns: int,
    fsize: int,
    stack: int,
    nofile: int,
    rl_as: int,
    cwd: str,
    argv: list[str],
    env: list[str],
) -> bytes:
    hdr = RUN_HDR.pack(MSG_RUN, flags, cpu_ns, wall_ns, fsize, stack, nofile, rl_as, len(argv), len(env))
    tail = b"".join(s.encode() + b"\0" for s in (cwd, *argv, *env))
    return hdr + tail


def decode_result(data: bytes) -> AgentResult:
    _, flags, wstatus, err, cpu, wall, rss = RESULT.unpack_from(data)
    return AgentResult(flags, wstatus, err, cpu, wall, rss)
