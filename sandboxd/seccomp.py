"""The run's seccomp policy: read from data/seccomp.toml, compiled once to BPF.

The agent receives the raw BPF program and loads it in each run's child right
before exec, so libseccomp is needed only here, on the host side.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import socket
import tempfile
import tomllib
from functools import lru_cache
from importlib import resources

import pyseccomp as sc

# Flags of clone() that would create a namespace; value is the kernel's ABI.
_CLONE_NS_FLAGS = (
    0x00020000,  # CLONE_NEWNS
    0x02000000,  # CLONE_NEWCGROUP
    0x04000000,  # CLONE_NEWUTS
    0x08000000,  # CLONE_NEWIPC
    0x10000000,  # CLONE_NEWUSER
    0x20000000,  # CLONE_NEWPID
    0x40000000,  # CLONE_NEWNET
)
_MAX_FAMILY = 64  # above AF_MAX on any current kernel; everything higher is denied


def load_policy() -> dict[str, object]:
    text = resources.files("sandboxd").joinpath("data/seccomp.toml").read_text()
    return tomllib.loads(text)


@lru_cache(maxsize=1)
def compile_default() -> bytes:
    """BPF bytes (struct sock_filter[]) of the default policy."""
    return compile_policy(load_policy())


def compile_policy(policy: dict[str, object]) -> bytes:
    f = sc.SyscallFilter(sc.ALLOW)
    kill = policy.get("kill", {})
    assert isinstance(kill, dict)
    for name in kill.get("syscalls", []):
        _add(f, sc.KILL_PROCESS, name)
    errnos = policy.get("errno", {})
    assert isinstance(errnos, dict)
    for ename, section in errnos.items():
        code = getattr(errno, ename, None)
        if not isinstance(code, int):
            raise ValueError(f"seccomp policy: unknown errno {ename!r}")
        for name in section.get("syscalls", []):
            _add(f, sc.ERRNO(code), name)
    socks = policy.get("sockets", {})
    assert isinstance(socks, dict)
    allowed = {int(getattr(socket, fam)) for fam in socks.get("allowed_families", [])}
    for call in ("socket", "socketpair"):
        for fam in range(_MAX_FAMILY):
            if fam not in allowed:
                f.add_rule(sc.ERRNO(errno.EPERM), call, sc.Arg(0, sc.EQ, fam))
        f.add_rule(sc.ERRNO(errno.EPERM), call, sc.Arg(0, sc.GE, _MAX_FAMILY))
    clone = policy.get("clone", {})
    assert isinstance(clone, dict)
    if clone.get("deny_namespace_flags"):
        for flag in _CLONE_NS_FLAGS:
            f.add_rule(sc.ERRNO(errno.EPERM), "clone", sc.Arg(0, sc.MASKED_EQ, flag, flag))
    locks = policy.get("locks", {})
    assert isinstance(locks, dict)
    if locks.get("noop"):
        _add(f, sc.ERRNO(0), "flock")  # "fails" with errno 0: returns 0, does nothing
        for cmd in locks.get("fcntl_commands", []):
            code = _OFD.get(cmd, getattr(fcntl, cmd, None))
            if not isinstance(code, int):
                raise ValueError(f"seccomp policy: unknown fcntl command {cmd!r}")
            for call in ("fcntl", "fcntl64"):
                with contextlib.suppress(ValueError):
                    _add_arg(f, sc.ERRNO(0), call, sc.Arg(1, sc.EQ, code))
    with tempfile.TemporaryFile() as tf:
        f.export_bpf(tf)
        tf.seek(0)
        return tf.read()


# Not in Python's fcntl module before 3.12 (linux/fcntl.h).
_OFD = {"F_OFD_SETLK": 37, "F_OFD_SETLKW": 38}


def _add_arg(f: sc.SyscallFilter, action: object, name: str, arg: object) -> None:
    if sc.resolve_syscall(sc.Arch.NATIVE, name) < 0:
        return  # not on this arch (fcntl64 is 32-bit only)
    f.add_rule(action, name, arg)


def _add(f: sc.SyscallFilter, action: object, name: str) -> None:
    try:
        f.add_rule(action, name)
    except (RuntimeError, ValueError, OSError) as e:
        # A syscall this libseccomp/arch does not know cannot be made anyway.
        if sc.resolve_syscall(sc.Arch.NATIVE, name) < 0:
            return
        raise ValueError(f"seccomp policy: cannot add rule for {name!r}: {e}") from e
