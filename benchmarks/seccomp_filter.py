"""What the seccomp filter costs per syscall, by kind of syscall.

First, deterministically: how many BPF instructions the filter executes for
typical calls (a small interpreter of the classic-BPF subset libseccomp
emits walks the program with each call's seccomp_data).  Calls whose path
reads only the syscall number and arch end in ALLOW for any argument, so the
kernel's per-syscall cache skips the filter for them entirely.  Then timed:
a small C helper (compiled here with gcc) loads the default policy's BPF, or
none, and times tight loops of raw syscalls: one the filter leaves to the
kernel's per-syscall ALLOW cache (getppid), ones it must run the program for
because a rule looks at their arguments (fcntl, madvise, prctl), and one it
answers itself (fsync, a noop rule).  Filter and no-filter loops alternate
in the same process run; the output is ns per call and the difference.

To compare two policies, run it once per tree, e.g. against main:

    PYTHONPATH=/work/main .venv/bin/python benchmarks/seccomp_filter.py

    .venv/bin/python benchmarks/seccomp_filter.py [--quick] [--json] [--rounds N]
"""

from __future__ import annotations

import argparse
import json
import statistics
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

import benchlib as bl

from sandboxd.sandbox import seccomp

HELPER = r"""
#define _GNU_SOURCE
#include <fcntl.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec * 1e9 + t.tv_nsec; }
int main(int argc, char **argv) {
    long n = atol(argv[2]);
    if (argv[1][0] != '-') {
        static struct sock_filter prog[4096];
        FILE *f = fopen(argv[1], "rb");
        size_t len = fread(prog, sizeof prog[0], 4096, f);
        struct sock_fprog fp = {(unsigned short)len, prog};
        if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) || syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &fp)) return 1;
    }
    int fd = open("/dev/shm", O_RDONLY | O_DIRECTORY);
    char *page = mmap(0, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    double t;
#define LOOP(name, call) t = now(); for (long i = 0; i < n; i++) call; printf("%s %.1f\n", name, (now() - t) / n);
    LOOP("getppid", syscall(SYS_getppid))
    LOOP("fcntl", syscall(SYS_fcntl, fd, F_GETFD))
    LOOP("madvise", syscall(SYS_madvise, page, 4096, MADV_NORMAL))
    LOOP("prctl", syscall(SYS_prctl, PR_GET_DUMPABLE, 0, 0, 0, 0))
    LOOP("fsync", syscall(SYS_fsync, fd))
    return 0;
}
"""


AUDIT_ARCH_X86_64 = 0xC000003E
# (name, syscall number, arguments) of typical calls.
TYPICAL = (
    ("read", 0, (3, 0, 4096)),
    ("mmap", 9, (0, 4096, 3, 0x22, -1, 0)),
    ("getppid", 110, ()),
    ("fcntl F_GETFD", 72, (3, 1)),
    ("fcntl F_SETLK", 72, (3, 6, 0)),
    ("madvise DONTNEED", 28, (0x7F0000000000, 4096, 4)),
    ("prctl PR_SET_NAME", 157, (15, 0)),
    ("socket AF_INET", 41, (2, 1, 0)),
    ("clone (thread)", 56, (0x3D0F00, 0)),
    ("fsync", 74, (3,)),
)


def bpf_steps(bpf: bytes, nr: int, args: tuple[int, ...]) -> tuple[int, int]:
    """(instructions executed, return value) of a classic-BPF seccomp program."""
    steps, ret, _ = bpf_trace(bpf, nr, args)
    return steps, ret


def bpf_trace(bpf: bytes, nr: int, args: tuple[int, ...]) -> tuple[int, int, bool]:
    """bpf_steps, and whether the path read an argument: when it did not, the
    kernel's per-syscall action cache answers that call without the filter."""
    read_args = False
    data = struct.pack(
        "<IIQ6Q", nr, AUDIT_ARCH_X86_64, 0, *((a & (1 << 64) - 1) for a in (*args, 0, 0, 0, 0, 0, 0)[:6])
    )
    insns = [struct.unpack_from("<HBBI", bpf, i) for i in range(0, len(bpf), 8)]
    acc = x = pc = steps = 0
    while True:
        code, jt, jf, k = insns[pc]
        steps += 1
        pc += 1
        if code == 0x20:  # ld [k]
            acc = struct.unpack_from("<I", data, k)[0]
            read_args |= k >= 8  # seccomp_data: nr, arch, then ip and the args
        elif code == 0x06:  # ret k
            return steps, k, read_args
        elif code == 0x54:  # and k
            acc &= k
        elif code in (0x15, 0x25, 0x35, 0x45):  # jeq, jgt, jge, jset k
            taken = {0x15: acc == k, 0x25: acc > k, 0x35: acc >= k, 0x45: bool(acc & k)}[code]
            pc += jt if taken else jf
        elif code == 0x05:  # ja k
            pc += k
        elif code == 0x00:  # ld #k
            acc = k
        elif code == 0x07:  # tax
            x = acc
        elif code == 0x87:  # txa
            acc = x
        else:
            raise ValueError(f"BPF opcode {code:#x} not interpreted")


def steps_table(bpf: bytes) -> tuple[str, dict[str, int]]:
    rows, out = [], {}
    for name, nr, args in TYPICAL:
        n, ret = bpf_steps(bpf, nr, args)
        out[name] = n
        rows.append([name, str(n), "ALLOW" if ret == 0x7FFF0000 else f"{ret:#x}"])
    return bl.markdown_table(["call", "BPF instructions run", "result"], rows), out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="few calls (smoke test; numbers meaningless)")
    p.add_argument("--json", action="store_true", help="print one JSON line on stdout (human text on stderr)")
    p.add_argument("--rounds", type=int, default=7, help="alternating filter/no-filter rounds (default 7)")
    p.add_argument("--calls", type=int, default=200_000, help="calls per syscall per round (default 200000)")
    a = p.parse_args(argv)
    rounds, calls = (2, 2000) if a.quick else (a.rounds, a.calls)
    bpf = seccomp.compile_default()
    with tempfile.TemporaryDirectory() as d:
        src, exe, prog = Path(d, "h.c"), Path(d, "h"), Path(d, "prog.bpf")
        src.write_text(HELPER)
        prog.write_bytes(bpf)
        subprocess.run(["gcc", "-O2", "-o", str(exe), str(src)], check=True)
        got: dict[str, dict[str, list[float]]] = {"none": {}, "filter": {}}
        for _ in range(rounds):
            for kind, arg in (("none", "-"), ("filter", str(prog))):
                out = subprocess.run([str(exe), arg, str(calls)], check=True, capture_output=True, text=True).stdout
                for line in out.splitlines():
                    name, ns = line.split()
                    got[kind].setdefault(name, []).append(float(ns))
    steps_md, steps = steps_table(bpf)
    rows, summary = [], {"filter_instructions": len(bpf) // 8, "steps": steps, "ns_per_call": {}}
    for name, base in got["none"].items():
        b, f = statistics.median(base), statistics.median(got["filter"][name])
        rows.append([name, f"{b:.1f}", f"{f:.1f}", f"{f - b:+.1f}"])
        summary["ns_per_call"][name] = {"none": b, "filter": f}  # type: ignore[index]
    text = f"filter: {len(bpf) // 8} BPF instructions\n{steps_md}\n\n" + bl.markdown_table(
        ["syscall", "no filter ns", "filter ns", "filter costs"], rows
    )
    print(text, file=sys.stderr if a.json else sys.stdout)
    if a.json:
        print(json.dumps(bl.clean_floats({"bench": "seccomp_filter", "quick": a.quick, **summary})))
    return 0


if __name__ == "__main__":
    sys.exit(main())
