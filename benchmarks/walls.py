"""Issue 13's walls on the per-run path, each timed alone (a C helper,
walls.c, does what the agent does for each, nothing else):

  between runs   the reset's network check (two preads of the namespace's
                 /proc/net/{dev,unix} + memcmp), the pid-numbering reset
                 (one pwrite of ns_last_pid), the SysV check (three *_INFO
                 calls), against 9a299e5's three /proc/sysvipc listings it
                 replaced; in a new net + pid + IPC namespace, as a worker is.
                 On cgroup v1, the daemon's reads right after a python3 run
                 in a group: the memory.numa_stat read that keeps clean page
                 cache out of the memory figure (new), the two it read before.
  the run        vfork + exec + wait of `/bin/true` and `python3 -c pass`
                 with: no filter; 9a299e5's seccomp policy (with --base);
                 this tree's; this tree's + the worker's socket-watch filter
                 (what a v1 box runs under); + the clone3 guard each run's
                 child loads on cgroup v2.  Variants alternate within each
                 round (order rotated), medians across all runs.

    git -C /work/main worktree add --detach /work/wt/base13 9a299e5
    PYTHONPATH=$PWD .venv/bin/python benchmarks/walls.py [--base /work/wt/base13] [--rounds 6] [--n 200]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import benchlib as bl
import pyseccomp as sc
from seccomp_filter import bpf_trace

from sandboxd.sandbox import seccomp

PROGRAMS = {"/bin/true": ["/bin/true"], "python3 -c pass": ["/usr/bin/python3", "-c", "pass"]}
# name -> (policy: "base" | "new" | None, socket-watch filter, clone3 guard)
VARIANTS: dict[str, tuple[str | None, bool, bool]] = {
    "no filter": (None, False, False),
    "9a299e5 policy": ("base", False, False),
    "policy": ("new", False, False),
    "policy + socket watch (v1 box)": ("new", True, False),
    "+ clone3 guard (v2 box)": ("new", True, True),
}
# The 9a299e5 tree keeps the policy compiler at sandboxd/seccomp.py, later trees in sandboxd/sandbox/
# (asked by path: the shared venv's editable install would resolve a missing module from /work/main).
BASE_BPF = "import importlib, sys; sys.stdout.buffer.write(importlib.import_module(sys.argv[1]).compile_default())"


def base_bpf(tree: Path) -> bytes:
    mod = "sandboxd.seccomp" if (tree / "sandboxd" / "seccomp.py").exists() else "sandboxd.sandbox.seccomp"
    env = {**os.environ, "PYTHONPATH": str(tree)}
    cmd = [sys.executable, "-c", BASE_BPF, mod]
    return subprocess.run(cmd, cwd=tree, env=env, check=True, capture_output=True).stdout


AGENT_C = Path(__file__).resolve().parent.parent / "sandboxd" / "sandbox" / "agent" / "agent.c"
# The agent's architecture constants, verbatim; the bodies of its socket-watch filter (in
# watch_sockets) and of its clone3 guard, as macros.
AGENT_ARCH = re.compile(r"^#if defined\(__x86_64__\)\n#define NATIVE_ARCH .*?^#endif$", re.S | re.M)
AGENT_FILTERS = {
    "AGENT_WATCH_INSNS": re.compile(
        r"static void watch_sockets\(void\) \{\s*struct sock_filter f\[\] = \{(.*?)\};", re.S
    ),
    "AGENT_GUARD_INSNS": re.compile(r"static struct sock_filter clone3_guard_insns\[\] = \{(.*?)\};", re.S),
}


def helper(d: Path) -> Path:
    """walls.c built with the agent's two filters, as agent.c declares them."""
    src = AGENT_C.read_text()
    header = d / "agent_filters.h"
    arch = AGENT_ARCH.search(src)
    if arch is None:
        raise SystemExit(f"walls.py: agent.c no longer defines NATIVE_ARCH as expected ({AGENT_ARCH.pattern})")
    lines = ["#include <linux/audit.h>", arch.group(0)]
    for name, pattern in AGENT_FILTERS.items():
        m = pattern.search(src)
        if m is None:
            raise SystemExit(f"walls.py: {name}: agent.c no longer declares it as expected ({pattern.pattern})")
        lines.append(f"#define {name} " + " ".join(m.group(1).split()))
    header.write_text("\n".join(lines) + "\n")
    exe = d / "walls"
    cc = ["gcc", "-O2", "-include", str(header), "-o", str(exe), str(Path(__file__).with_name("walls.c"))]
    subprocess.run(cc, check=True)
    return exe


def time_steps(exe: Path, n: int, rounds: int) -> dict[str, float]:
    got: dict[str, list[float]] = {}
    for _ in range(rounds):
        out = subprocess.run([str(exe), "steps", str(n)], check=True, capture_output=True, text=True).stdout
        for line in out.splitlines():
            name, ns = line.rsplit(" ", 1)
            got.setdefault(name, []).append(float(ns))
    return {k: statistics.median(v) for k, v in got.items()}


def time_runs(
    exe: Path, policies: dict[str, Path], variants: list[str], n: int, rounds: int, block: int
) -> dict[str, dict[str, list[int]]]:
    """Each variant a helper process of its own; their blocks interleaved
    (order rotated per round), so load bursts fall on every variant alike."""
    got: dict[str, dict[str, list[int]]] = {p: {v: [] for v in variants} for p in PROGRAMS}
    for prog, argv in PROGRAMS.items():
        k = n if prog == "/bin/true" else max(n // 5, 10)
        step = min(block, k)
        helpers = {}
        for v in variants:
            pol, watch, guard = VARIANTS[v]
            cmd = [str(exe), "run", str(policies[pol]) if pol else "-", str(int(watch)), str(int(guard)), *argv]
            helpers[v] = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            for rnd in range(rounds * ((k + step - 1) // step)):
                order = variants[rnd % len(variants) :] + variants[: rnd % len(variants)]
                for v in order:
                    h = helpers[v]
                    assert h.stdin is not None and h.stdout is not None
                    h.stdin.write(f"{step}\n")
                    h.stdin.flush()
                    line = h.stdout.readline()
                    if not line:
                        raise SystemExit(f"walls helper ({v}, {prog}) exited {h.wait()}")
                    got[prog][v] += [int(x) for x in line.split()]
        finally:
            for h in helpers.values():
                if h.stdin:
                    h.stdin.close()
                h.wait()
    return got


V1_MEMORY = Path("/sys/fs/cgroup/memory")


def time_cgroup_reads(exe: Path, n: int, rounds: int) -> dict[str, float]:
    """cgroup v1 (the host's hierarchy here): the daemon's reads right after a
    run (the run's charges not yet flushed into the group's stats), on a
    group of our own.  Since 9a299e5 a run's figure leaves out clean page
    cache: one more pread, of memory.numa_stat (its `file=` count); the
    other two were read before too."""
    if not (V1_MEMORY / "memory.numa_stat").exists():
        return {}
    cg = V1_MEMORY / f"sandboxd-bench-walls-{os.getpid()}"
    cg.mkdir()
    got: dict[str, list[float]] = {}
    try:
        for _ in range(rounds):
            cmd = [str(exe), "cgreads", str(n), str(cg), *PROGRAMS["python3 -c pass"]]
            for line in subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines():
                name, ns = line.rsplit(" ", 1)
                got.setdefault(name, []).append(float(ns))
        return {k: statistics.median(v) for k, v in got.items()}
    finally:
        cg.rmdir()


STRACE_LINE = re.compile(r"^\d+\s+(\w+)\(([^)]*)\)\s+=")


def filter_work(policies: dict[str, Path]) -> dict[str, dict[str, tuple[int, int]]]:
    """Deterministic: per program run (its calls as `strace -f -e raw=all`
    shows them), how many calls each policy's filter runs for (the path reads
    an argument, so the kernel's per-syscall cache cannot answer) and how many
    BPF instructions they execute in all."""
    strace = shutil.which("strace")
    if strace is None:
        return {}
    out: dict[str, dict[str, tuple[int, int]]] = {}
    for prog, argv in PROGRAMS.items():
        with tempfile.NamedTemporaryFile("r", suffix=".strace") as f:
            subprocess.run([strace, "-f", "-qq", "-e", "raw=all", "-o", f.name, *argv], check=True)
            calls = [m.groups() for m in map(STRACE_LINE.match, f.read().splitlines()) if m]
        for pol, path in policies.items():
            bpf, n_calls, insns = path.read_bytes(), 0, 0
            for name, args in calls:
                nr = sc.resolve_syscall(sc.Arch.NATIVE, name)
                vals = tuple(int(a, 0) for a in args.split(", ") if a)
                steps, _, uncached = bpf_trace(bpf, nr, vals)
                n_calls += uncached
                insns += steps if uncached else 0
            out.setdefault(prog, {})[pol] = (n_calls, insns)
    return out


def report(
    steps: dict[str, float],
    runs: dict[str, dict[str, list[int]]],
    bpf_len: dict[str, int],
    work: dict[str, dict[str, tuple[int, int]]],
) -> str:
    lines = [f"Machine: {bl.machine_line(bl.machine())}", "", f"Filter sizes (BPF instructions): {bpf_len}", ""]
    rows = [[prog, pol, str(c), str(i)] for prog, by in work.items() for pol, (c, i) in by.items()]
    if rows:
        head = ["program", "policy", "calls the filter runs for", "BPF instructions run"]
        lines += ["Per run (strace -f):", "", bl.markdown_table(head, rows), ""]
    rows = [[name.replace("  ", "&nbsp;&nbsp;"), f"{ns / 1000:.2f}"] for name, ns in steps.items()]
    lines += [bl.markdown_table(["between runs: step", "median µs"], rows), ""]
    for prog, by in runs.items():
        floor = bl.summary_ms(by["no filter"])["p50"]
        rows = []
        for v, xs in by.items():
            s = bl.summary_ms(xs)
            rows.append(
                [v, str(len(xs)), bl.fmt_ms(s["p50"]), bl.fmt_ms(s["p99"]), f"{(s['p50'] - floor) * 1000:+.1f}"]
            )
        lines += [
            f"`{prog}`:",
            "",
            bl.markdown_table(["run under", "runs", "p50 ms", "p99 ms", "p50 vs no filter µs"], rows),
            "",
        ]
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", type=Path, help="a tree of 9a299e5 (or any older one): its policy is timed too")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--n", type=int, default=200, help="/bin/true runs per variant and round (python3: n/5)")
    p.add_argument("--block", type=int, default=20, help="runs per variant before the next one's (default 20)")
    p.add_argument("--quick", action="store_true", help="smoke test: 2 rounds of 20 (numbers meaningless)")
    a = p.parse_args()
    if a.quick:
        a.rounds, a.n = 2, 20
    variants = [v for v, (pol, _, _) in VARIANTS.items() if pol != "base" or a.base]
    with tempfile.TemporaryDirectory() as td:
        d = Path(td)
        exe = helper(d)
        policies = {"new": d / "new.bpf"}
        policies["new"].write_bytes(seccomp.compile_default())
        if a.base:
            policies["base"] = d / "base.bpf"
            policies["base"].write_bytes(base_bpf(a.base.resolve()))
        bpf_len = {k: v.stat().st_size // 8 for k, v in policies.items()}
        steps = time_steps(exe, a.n * 10, a.rounds) | time_cgroup_reads(exe, max(a.n // 5, 10), a.rounds)
        runs = time_runs(exe, policies, variants, a.n, a.rounds, a.block)
        work = filter_work(policies)
    print(report(steps, runs, bpf_len, work))
    return 0


if __name__ == "__main__":
    sys.exit(main())
