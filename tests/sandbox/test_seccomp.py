"""The compiled seccomp policy against the real kernel.

Generated from sandboxd/data/seccomp.toml, so a rule added there is covered
without a new test: every rule is in the filter, every argument rule decides
on exactly the bits the kernel reads (a high bit set in a 32-bit argument
changes nothing), and every errno/noop rule answers as declared.

Each probe runs in a forked child that drops to nobody and loads the filter,
then makes raw syscalls.  "Marked" filters replace every rule's action with
its own errno (MARK + index): no kernel call returns an errno that high, so
a marker proves the filter decided, and which rule did.
"""

from __future__ import annotations

import ctypes
import dataclasses
import json
import os
import struct
from collections.abc import Sequence
from typing import Any

import pyseccomp as sc
import pytest

from sandboxd.sandbox import seccomp
from sandboxd.sandbox.seccomp import Rule

MARK = 1000  # markers 1000..; the kernel caps SECCOMP_RET_ERRNO data at 4095
HIGH = (1 << 32, 0xFFFFFFFF << 32, 1 << 63)  # set, sign-extended, top bit

# The kernel's C type of every argument a rule filters (x86-64), checked
# independently of the `bits` the policy declares.  A new argument rule
# needs its line here: look the parameter up in the SYSCALL_DEFINE.
KERNEL_ARG_BITS = {
    ("fcntl", 1): 32,  # unsigned int cmd
    ("socket", 0): 32,  # int family
    ("socketpair", 0): 32,  # int family
    ("clone", 0): 32,  # unsigned long clone_flags, but kernel_clone() reads lower_32_bits()
    ("fadvise64", 3): 32,  # int advice
    ("madvise", 2): 32,  # int behavior
    ("prctl", 0): 32,  # int option
    ("preadv2", 5): 32,  # rwf_t (int) flags
    ("pwritev2", 5): 32,
    ("msync", 2): 32,  # int flags
}
SLOT = object()
# Arguments that make each call fail harmlessly should the filter let it
# through (the filtered argument goes in SLOT): a bad fd, an unaligned
# address, an invalid flag combination.  OR_INTO_SLOT bits are added to the
# filtered argument itself when the other arguments cannot make it fail.
POISON: dict[str, tuple[object, ...]] = {
    "fcntl": (-1, SLOT, 0),
    "socket": (SLOT, 1, 0),
    "socketpair": (SLOT, 1, 0, 0),
    "clone": (SLOT, 0, 0, 0, 0),
    "fadvise64": (-1, 0, 0, SLOT),
    "madvise": (1, 4096, SLOT),
    "prctl": (SLOT, 0, 1, 1, 1),
    "preadv2": (-1, 0, 0, 0, 0, SLOT),
    "pwritev2": (-1, 0, 0, 0, 0, SLOT),
    "msync": (1, 4096, SLOT),
}
OR_INTO_SLOT = {"clone": 0x800}  # CLONE_SIGHAND without CLONE_VM: EINVAL before anything is created

POLICY = seccomp.load_policy()
RULES = seccomp.rules(POLICY)
ARG_RULES = [(i, r) for i, r in enumerate(RULES) if r.cmp is not None]


def marked(rules: Sequence[Rule]) -> bytes:
    return seccomp.compile_rules([dataclasses.replace(r, action=sc.ERRNO(MARK + i)) for i, r in enumerate(rules)])


def in_filtered_child(bpf: bytes, calls: list[tuple[int, tuple[int, ...]]]) -> list[tuple[int, int]]:
    """(return value, errno) of each raw syscall, made under the filter."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            os.close(r)
            os.write(w, json.dumps(_child(bpf, calls)).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        out = f.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "the probe child failed"
    return [tuple(x) for x in json.loads(out)]


def _child(bpf: bytes, calls: list[tuple[int, tuple[int, ...]]]) -> list[tuple[int, int]]:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    # Should a rule be missing, the call runs unprivileged: it can fail, not harm.
    os.setgroups([])
    os.setresgid(65534, 65534, 65534)
    os.setresuid(65534, 65534, 65534)
    assert libc.prctl(38, 1, 0, 0, 0) == 0  # PR_SET_NO_NEW_PRIVS
    buf = ctypes.create_string_buffer(bpf, len(bpf))
    prog = struct.pack("HxxxxxxQ", len(bpf) // 8, ctypes.addressof(buf))
    assert libc.syscall(317, 1, 0, prog) == 0, "seccomp(SET_MODE_FILTER)"
    out = []
    for nr, args in calls:
        ctypes.set_errno(0)
        ret = libc.syscall(ctypes.c_long(nr), *(ctypes.c_long(_signed(a)) for a in args))
        out.append((int(ret), ctypes.get_errno() if ret == -1 else 0))
    return out


def _signed(v: int) -> int:
    v &= (1 << 64) - 1
    return v - (1 << 64) if v >> 63 else v


def nr(name: str) -> int:
    return int(sc.resolve_syscall(sc.Arch.NATIVE, name))


def probe_args(rule: Rule, value: int) -> tuple[int, ...]:
    assert rule.syscall in POISON, f"{rule.syscall}: add harmless arguments to POISON for the new rule"
    value |= OR_INTO_SLOT.get(rule.syscall, 0)
    return tuple(value if a is SLOT else int(a) for a in POISON[rule.syscall])  # type: ignore[call-overload]


def fires(rule: Rule, args: tuple[int, ...]) -> bool:
    """What the kernel would make of it: the rule's test on the bits it reads."""
    c = rule.cmp
    assert c is not None
    seen = args[c.index] & ((1 << KERNEL_ARG_BITS[(rule.syscall, c.index)]) - 1)
    return (seen & c.mask) == c.value


def expected(args_of: str, args: tuple[int, ...]) -> set[int]:
    return {MARK + i for i, r in ARG_RULES if r.syscall == args_of and fires(r, args)}


def test_every_argument_rule_declares_the_kernels_width() -> None:
    for spec in seccomp.arg_specs(POLICY):
        for call in spec.syscalls:
            key = (call, spec.index)
            assert key in KERNEL_ARG_BITS, f"{key}: add the kernel's type of this argument to KERNEL_ARG_BITS"
            assert spec.bits == KERNEL_ARG_BITS[key], f"{key}: the kernel reads {KERNEL_ARG_BITS[key]} bits"


def test_every_rule_is_in_the_filter() -> None:
    assert len(RULES) > 100  # the policy was read (sockets alone make 68)
    calls = []
    for r in RULES:
        args = probe_args(r, r.cmp.value) if r.cmp else (0,) * 6
        calls.append((nr(r.syscall), args))
    got = in_filtered_child(marked(RULES), calls)
    for i, (r, (ret, err), (_, args)) in enumerate(zip(RULES, got, calls, strict=True)):
        want = expected(r.syscall, args) if r.cmp else {MARK + i}
        assert ret == -1 and err in want, f"{r}: got {ret} errno {err}, want one of {sorted(want)}"


def _width_probes() -> list[tuple[Rule, tuple[int, ...]]]:
    probes = []
    for _, r in ARG_RULES:
        assert r.cmp is not None
        for v in (r.cmp.value, *(r.cmp.value | h for h in HIGH)):
            probes.append((r, probe_args(r, v)))
    for spec in seccomp.arg_specs(POLICY):  # values an `only` rule lets through stay allowed
        for call in spec.syscalls:
            rule = Rule(spec.action, call, seccomp.Cmp(spec.index, 0, 0, spec.bits))
            probes += [(rule, probe_args(rule, v | h)) for v in spec.only for h in (0, *HIGH)]
    return probes


def test_argument_rules_compare_exactly_the_bits_the_kernel_reads() -> None:
    """F_SETLK | 1<<32 is F_SETLK to the kernel, so it must be to the filter."""
    probes = _width_probes()
    got = in_filtered_child(marked(RULES), [(nr(r.syscall), args) for r, args in probes])
    wrong = []
    for (r, args), (ret, err) in zip(probes, got, strict=True):
        want = expected(r.syscall, args)
        decided = ret == -1 and err >= MARK
        if (decided and err in want) if want else not decided:
            continue
        wrong.append(f"{r.syscall}{tuple(hex(a) for a in args)}: got {ret}/{err}, want {sorted(want) or 'no rule'}")
    assert not wrong, "\n".join(wrong)


def _declared(action: int) -> tuple[int, int]:
    code = action & 0xFFFF
    return (0, 0) if code == 0 else (-1, code)


@pytest.mark.parametrize(
    "rule", [r for r in RULES if r.cmp is None and r.action != sc.KILL_PROCESS], ids=lambda r: r.syscall
)
def test_errno_and_noop_rules_answer_as_declared(rule: Rule) -> None:
    # fd -1 everywhere: were the call to reach the kernel it would fail with
    # EBADF (or EFAULT), not with the declared errno, nor succeed as a noop.
    (got,) = in_filtered_child(seccomp.compile_default(), [(nr(rule.syscall), (-1,) * 6)])
    assert got == _declared(rule.action), f"{rule.syscall}: {got}"


SHARED_FILE = "/usr/share/common-licenses/GPL-3"  # in every box's rootfs (the host's /usr), mapped by no one


def cached_pages(path: str) -> int:
    """The host's page-cache pages of a file, from cachestat(2) (kernel 6.5+)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    rng = struct.pack("QQ", 0, 0)  # offset 0, length 0: to the end
    out = ctypes.create_string_buffer(40)  # nr_cache, nr_dirty, nr_writeback, nr_evicted, nr_recently_evicted
    fd = os.open(path, os.O_RDONLY)
    try:
        assert libc.syscall(451, fd, rng, out, 0) == 0, os.strerror(ctypes.get_errno())
    finally:
        os.close(fd)
    return int(struct.unpack_from("Q", out.raw)[0])


def test_fadvise_from_a_box_leaves_the_host_page_cache(engine: Any) -> None:
    """POSIX_FADV_DONTNEED/NOREUSE on a shared file: the hint is ignored, nothing is evicted."""
    with open(SHARED_FILE, "rb") as f:
        size = len(f.read())  # now cached
    pages = (size + 4095) // 4096
    assert cached_pages(SHARED_FILE) == pages
    evict = (
        f"import os; fd = os.open({SHARED_FILE!r}, os.O_RDONLY); "
        "os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED); os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_NOREUSE); "
        "print('advised')"
    )
    r = engine.run(["python3", "-c", evict])
    assert (r.status, r.stdout) == ("ok", b"advised\n"), r
    assert cached_pages(SHARED_FILE) == pages, "a box evicted the host's page cache of a shared file"
