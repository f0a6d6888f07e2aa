"""The run's seccomp policy: read from data/seccomp.toml, compiled once to BPF.

The agent receives the raw BPF program and loads it in each box right before
its first run, so libseccomp is needed only here, on the host side.

The policy is parsed into `Rule`s first (one per libseccomp rule), so tests
can check every rule, present and future, against the kernel: see
tests/sandbox/test_seccomp.py.
"""

from __future__ import annotations

import errno
import tempfile
import tomllib
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any

import pyseccomp as sc

# Kernel ABI values of the constants the policy names (x86-64; POSIX_FADV_*
# differ on s390).  Not taken from Python's modules: several are missing
# there (F_OFD_*, MADV_COLD, CLONE_*) depending on the Python version.
CONSTANTS: dict[str, int] = {
    "F_SETLK": 6,
    "F_SETLKW": 7,
    "F_OFD_SETLK": 37,
    "F_OFD_SETLKW": 38,
    "F_SETLEASE": 1024,
    "F_NOTIFY": 1026,
    "AF_UNIX": 1,
    "AF_INET": 2,
    "AF_INET6": 10,
    "CLONE_NEWNS": 0x00020000,
    "CLONE_NEWCGROUP": 0x02000000,
    "CLONE_NEWUTS": 0x04000000,
    "CLONE_NEWIPC": 0x08000000,
    "CLONE_NEWUSER": 0x10000000,
    "CLONE_NEWPID": 0x20000000,
    "CLONE_NEWNET": 0x40000000,
    "POSIX_FADV_DONTNEED": 4,
    "POSIX_FADV_NOREUSE": 5,
    "MADV_MERGEABLE": 12,
    "MADV_COLD": 20,
    "MADV_PAGEOUT": 21,
    "PR_SET_MEMORY_MERGE": 67,
    "RWF_NOWAIT": 0x8,
    "MS_SYNC": 4,
}
KILL = int(sc.KILL_PROCESS)
NOOP = int(sc.ERRNO(0))  # "fails" with errno 0: the call returns 0 and does nothing


@dataclass(frozen=True)
class Cmp:
    """(argument & mask) == value, on an argument the kernel reads `bits` of."""

    index: int
    mask: int
    value: int
    bits: int


@dataclass(frozen=True)
class Rule:
    action: int
    syscall: str
    cmp: Cmp | None = None


@dataclass(frozen=True)
class ArgSpec:
    """One [[arg]] table of the policy, names resolved."""

    syscalls: tuple[str, ...]
    index: int
    bits: int
    action: int
    equal: tuple[int, ...] = ()
    any_bit: tuple[int, ...] = ()
    only: tuple[int, ...] = ()

    def cmps(self) -> list[Cmp]:
        full = (1 << self.bits) - 1
        out = [Cmp(self.index, full, v, self.bits) for v in self.equal]
        out += [Cmp(self.index, b, b, self.bits) for b in self.any_bit]
        if self.only:
            out += [Cmp(self.index, m, v, self.bits) for m, v in _cover_except(set(self.only), self.bits)]
        return out


def _cover_except(keep: set[int], bits: int) -> list[tuple[int, int]]:
    """(mask, value) pairs matching every `bits`-bit value except those in keep.

    Aligned power-of-two blocks, as in CIDR aggregation: a handful of
    masked compares (34 for 3 kept 32-bit values) instead of one per value.
    """
    full = (1 << bits) - 1
    out: list[tuple[int, int]] = []

    def block(start: int, size: int) -> None:
        if not any(start <= k < start + size for k in keep):
            out.append((full & ~(size - 1), start))
        elif size > 1:
            block(start, size // 2)
            block(start + size // 2, size // 2)

    block(0, 1 << bits)
    return out


def load_policy() -> dict[str, Any]:
    text = resources.files("sandboxd").joinpath("data/seccomp.toml").read_text()
    return tomllib.loads(text)


@lru_cache(maxsize=2)
def compile_default(worker_clone3: bool = False) -> bytes:
    """BPF bytes (struct sock_filter[]) of the default policy.  worker_clone3:
    the agent's worker (which the program inherits the filter from) needs
    clone3 for CLONE_INTO_CGROUP; the agent then stacks its own filter making
    clone3 ENOSYS on every run's program (C_GUARD_CLONE3), so what the program
    may do is the same."""
    policy = load_policy()
    if worker_clone3:
        enosys = policy["errno"]["ENOSYS"]
        enosys["syscalls"] = [s for s in enosys["syscalls"] if s != "clone3"]
    return compile_policy(policy)


def compile_policy(policy: dict[str, Any]) -> bytes:
    return compile_rules(rules(policy))


def action_of(name: str) -> int:
    if name == "kill":
        return KILL
    if name == "noop":
        return NOOP
    code = getattr(errno, name, None)
    if not isinstance(code, int):
        raise ValueError(f"seccomp policy: unknown action {name!r} (kill, noop or an errno name)")
    return int(sc.ERRNO(code))


SECTIONS = {"kill", "errno", "noop", "arg"}


def rules(policy: dict[str, Any]) -> list[Rule]:
    extra = sorted(set(policy) - SECTIONS)
    if extra:  # a section nothing reads would look like a rule yet allow everything
        raise ValueError(f"seccomp policy: unknown sections {extra}, known: {sorted(SECTIONS)}")
    out = [Rule(KILL, n) for n in policy.get("kill", {}).get("syscalls", [])]
    for ename, section in policy.get("errno", {}).items():
        out += [Rule(action_of(ename), n) for n in section.get("syscalls", [])]
    out += [Rule(NOOP, n) for n in policy.get("noop", {}).get("syscalls", [])]
    for spec in arg_specs(policy):
        out += [Rule(spec.action, call, c) for call in spec.syscalls for c in spec.cmps()]
    unknown = sorted({r.syscall for r in out if not known(r.syscall)})
    if unknown:
        # A typo would silently allow the call: refuse to start instead.
        raise ValueError(f"seccomp policy: libseccomp does not know {unknown} on this arch (misspelt? too old?)")
    return out


def arg_specs(policy: dict[str, Any]) -> list[ArgSpec]:
    specs = [_spec(t) for t in policy.get("arg", [])]
    if specs and int(sc.system_arch()) != sc.Arch.X86_64:
        # Another arch numbers arguments and constants differently (fadvise64_64, fcntl64, ...).
        raise ValueError("seccomp policy: argument positions and constants are x86-64's; port data/seccomp.toml")
    return specs


def _spec(t: dict[str, Any]) -> ArgSpec:
    bits = t.get("bits")
    if bits not in (32, 64):
        raise ValueError(f"seccomp policy: [[arg]] {t.get('syscalls')}: bits must be 32 or 64 (the kernel's type)")
    spec = ArgSpec(
        syscalls=tuple(t["syscalls"]),
        index=int(t["arg"]),
        bits=bits,
        action=action_of(t["action"]),
        equal=tuple(_value(v, bits) for v in t.get("equal", [])),
        any_bit=tuple(_value(v, bits) for v in t.get("any_bit", [])),
        only=tuple(_value(v, bits) for v in t.get("only", [])),
    )
    if not 0 <= spec.index < 6 or not (spec.equal or spec.any_bit or spec.only):
        raise ValueError(f"seccomp policy: [[arg]] {spec.syscalls}: needs arg 0-5 and equal, any_bit or only")
    return spec


def _value(v: object, bits: int) -> int:
    n = CONSTANTS.get(v) if isinstance(v, str) else v
    if not isinstance(n, int) or not 0 <= n < (1 << bits):
        raise ValueError(f"seccomp policy: {v!r} is not a known constant or a {bits}-bit value")
    return n


def known(name: str) -> bool:
    """Whether this libseccomp knows the call on this arch."""
    return int(sc.resolve_syscall(sc.Arch.NATIVE, name)) >= 0


def compile_rules(rs: list[Rule]) -> bytes:
    f = sc.SyscallFilter(sc.ALLOW)
    # A binary search on the syscall number instead of a linear chain: the
    # calls the filter does not decide by number alone (fcntl, madvise, ...)
    # pay ~log2(listed) jumps, not one per listed call.  The others are
    # skipped by the kernel's per-syscall cache of constant ALLOW results.
    f.set_attr(sc.Attr.CTL_OPTIMIZE, 2)
    for r in rs:
        try:
            f.add_rule(r.action, r.syscall, *([_arg(r.cmp)] if r.cmp else []))
        except (RuntimeError, ValueError, OSError) as e:
            raise ValueError(f"seccomp policy: cannot add rule {r}: {e}") from e
    with tempfile.TemporaryFile() as tf:
        f.export_bpf(tf)
        tf.seek(0)
        return tf.read()


def _arg(c: Cmp) -> sc.Arg:
    if c.mask == (1 << 64) - 1:
        return sc.Arg(c.index, sc.EQ, c.value)
    # mask < 2**32 for a 32-bit argument: the high half is never compared.
    return sc.Arg(c.index, sc.MASKED_EQ, c.mask, c.value)
