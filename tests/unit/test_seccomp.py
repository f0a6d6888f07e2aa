"""The seccomp policy as data (sandboxd/sandbox/seccomp.py): parsing, and the
compiled BPF program read back without loading it.

The program is run here by a small classic-BPF interpreter on seccomp_data
built in Python, so every rule's decision is checked as any user in
milliseconds.  That the kernel decides the same, high argument bits
included, is checked by loading it: tests/sandbox/test_seccomp.py (root).
"""

from __future__ import annotations

import struct
from typing import Any

import pyseccomp as sc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sandboxd.sandbox import seccomp
from sandboxd.sandbox.seccomp import Rule

AUDIT_ARCH_X86_64 = 0xC000003E
AUDIT_ARCH_I386 = 0x40000003
X32_BIT = 0x40000000  # x32 ABI syscall numbers (another ABI on the same arch)
ALLOW = 0x7FFF0000  # SECCOMP_RET_ALLOW
BPF_MAXINSNS = 4096  # the kernel refuses longer programs
HIGH = (1 << 32, 0xFFFFFFFF << 32, 1 << 63)  # set, sign-extended, top bit

POLICY = seccomp.load_policy()
RULES = seccomp.rules(POLICY)
PROGRAM = seccomp.compile_default()


def run_bpf(prog: bytes, nr: int, args: tuple[int, ...] = (0,) * 6, arch: int = AUDIT_ARCH_X86_64) -> int:
    """The filter's return value for one syscall: classic BPF (the subset a
    seccomp filter may use) over struct seccomp_data, little-endian."""
    data = struct.pack("<iIQ6Q", nr, arch, 0, *(a & (1 << 64) - 1 for a in args))
    insns = [struct.unpack_from("<HBBI", prog, i) for i in range(0, len(prog), 8)]
    a = x = pc = 0
    mem = [0] * 16
    alu = {0x00: int.__add__, 0x10: int.__sub__, 0x20: int.__mul__, 0x40: int.__or__, 0x50: int.__and__}
    alu |= {0x60: int.__lshift__, 0x70: int.__rshift__, 0xA0: int.__xor__}
    jump = {0x10: int.__eq__, 0x20: int.__gt__, 0x30: int.__ge__, 0x40: lambda v, k: bool(v & k)}
    while True:
        code, jt, jf, k = insns[pc]
        pc += 1
        cls, op, src = code & 0x07, code & 0xF0, x if code & 0x08 else k
        if code == 0x20:  # ld [k]
            a = struct.unpack_from("<I", data, k)[0]
        elif code in (0x00, 0x01):  # ld #k, ldx #k
            a, x = (k, x) if code == 0x00 else (a, k)
        elif code in (0x60, 0x61):  # ld M[k], ldx M[k]
            a, x = (mem[k], x) if code == 0x60 else (a, mem[k])
        elif code in (0x02, 0x03):  # st, stx
            mem[k] = a if code == 0x02 else x
        elif cls == 0x04 and op in alu:
            a = alu[op](a, src) & 0xFFFFFFFF
        elif code == 0x05:  # ja
            pc += k
        elif cls == 0x05 and op in jump:
            pc += jt if jump[op](a, src) else jf
        elif code == 0x06:  # ret #k
            return k
        elif code == 0x16:  # ret a
            return a
        elif code in (0x07, 0x87):  # tax, txa
            a, x = (a, a) if code == 0x07 else (x, x)
        else:  # fail loudly, never pass on a program this reader does not follow
            raise AssertionError(f"instruction {pc - 1}: opcode {code:#x} not handled by this interpreter")


def nr(name: str) -> int:
    return int(sc.resolve_syscall(sc.Arch.NATIVE, name))


def decided(name: str, args: tuple[int, ...]) -> int:
    return run_bpf(PROGRAM, nr(name), args)


def fires(r: Rule, args: tuple[int, ...]) -> bool:
    assert r.cmp is not None
    return (args[r.cmp.index] & ((1 << r.cmp.bits) - 1) & r.cmp.mask) == r.cmp.value


def with_arg(index: int, value: int) -> tuple[int, ...]:
    return tuple(value if i == index else 0 for i in range(6))


def test_the_policy_compiles_to_a_program_the_kernel_would_take() -> None:
    assert len(PROGRAM) % 8 == 0 and 0 < len(PROGRAM) // 8 <= BPF_MAXINSNS
    assert seccomp.compile_policy(POLICY) == PROGRAM  # deterministic: the same policy, the same bytes


def test_every_rule_without_arguments_decides_as_declared() -> None:
    plain = [r for r in RULES if r.cmp is None]
    assert len(plain) > 60  # the policy was read
    for r in plain:
        assert decided(r.syscall, (0,) * 6) == r.action, r


def test_every_argument_rule_fires_on_the_bits_the_kernel_reads_and_only_there() -> None:
    arg_rules = [r for r in RULES if r.cmp is not None]
    assert len(arg_rules) > 50  # sockets alone make 68
    for r in arg_rules:
        assert r.cmp is not None
        highs = HIGH if r.cmp.bits == 32 else ()
        for v in (r.cmp.value, *(r.cmp.value | h for h in highs)):
            args = with_arg(r.cmp.index, v)
            want = {x.action for x in RULES if x.syscall == r.syscall and x.cmp is not None and fires(x, args)}
            assert decided(r.syscall, args) in want, f"{r} with {v:#x}"


def test_values_an_only_rule_keeps_stay_allowed_whatever_the_high_bits() -> None:
    specs = [s for s in seccomp.arg_specs(POLICY) if s.only]
    assert specs  # socket families
    for spec in specs:
        for call in spec.syscalls:
            for v in spec.only:
                for h in (0, *HIGH):
                    assert decided(call, with_arg(spec.index, v | h)) == ALLOW, f"{call} {v | h:#x}"
            assert decided(call, with_arg(spec.index, 16)) == spec.action  # AF_NETLINK


@pytest.mark.parametrize("name", ["read", "write", "openat", "execve", "mmap", "exit_group", "clone"])
def test_calls_the_policy_does_not_list_are_allowed(name: str) -> None:
    assert decided(name, (0,) * 6) == ALLOW


def test_another_arch_or_abi_is_killed() -> None:
    # A 32-bit or x32 call numbers syscalls differently: the table above would not apply.
    assert run_bpf(PROGRAM, 1, arch=AUDIT_ARCH_I386) != ALLOW
    assert run_bpf(PROGRAM, nr("read") | X32_BIT) != ALLOW


def test_the_interpreter_can_tell_the_difference() -> None:
    # A program that allows everything must fail the checks above.
    allow_all = seccomp.compile_rules([])
    assert run_bpf(allow_all, nr("ptrace")) == ALLOW != decided("ptrace", (0,) * 6)


@settings(max_examples=100, deadline=None, database=None)
@given(st.sets(st.integers(0, 255), max_size=6))
def test_cover_except_matches_every_value_but_the_kept_ones(keep: set[int]) -> None:
    pairs = seccomp._cover_except(keep, 8)
    matched = {v for v in range(256) if any(v & m == val for m, val in pairs)}
    assert matched == set(range(256)) - keep


def test_a_policy_rule_of_the_wrong_width_is_refused() -> None:
    bad: dict[str, Any] = {"arg": [{"syscalls": ["fcntl"], "arg": 1, "bits": 16, "equal": [6], "action": "noop"}]}
    with pytest.raises(ValueError, match="bits must be 32 or 64"):
        seccomp.rules(bad)
    bad["arg"][0] |= {"bits": 32, "equal": [1 << 32]}
    with pytest.raises(ValueError, match="32-bit value"):
        seccomp.rules(bad)
    with pytest.raises(ValueError, match="unknown sections"):  # e.g. main's old [locks] table
        seccomp.rules({"locks": {"noop": True}})
    with pytest.raises(ValueError, match="does not know"):  # a typo must not leave the call allowed
        seccomp.rules({"errno": {"ENOSYS": {"syscalls": ["inotfy_init"]}}})


@pytest.mark.parametrize(
    ("policy", "why"),
    [
        ({"errno": {"EWHATEVER": {"syscalls": ["kcmp"]}}}, "unknown action 'EWHATEVER'"),
        ({"arg": [{"syscalls": ["fcntl"], "arg": 6, "bits": 32, "equal": [6], "action": "noop"}]}, "arg 0-5"),
        ({"arg": [{"syscalls": ["fcntl"], "arg": 1, "bits": 32, "action": "noop"}]}, "equal, any_bit or only"),
        ({"arg": [{"syscalls": ["fcntl"], "arg": 1, "bits": 32, "equal": ["F_NOPE"], "action": "noop"}]}, "F_NOPE"),
    ],
)
def test_a_bad_policy_is_refused_naming_what_is_wrong(policy: dict[str, Any], why: str) -> None:
    with pytest.raises(ValueError, match=why):
        seccomp.rules(policy)
