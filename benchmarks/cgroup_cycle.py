"""The daemon's CPU for one run's cgroup v1 work on a lone run's path:
prepare, finish (before the agent's reset: F_RESET_BEHIND) and the
between-runs step after it, on a real box group holding 8 MiB of clean page
cache (more than the between-runs threshold: the common case once a box has
run real programs, whose files stay charged to it).  No box, no agent: the
calls alone, N per round.  It measures the sandboxd on PYTHONPATH, so one
checkout's script measures another's code:

    PYTHONPATH=/path/to/base .venv/bin/python benchmarks/cgroup_cycle.py   # base
    PYTHONPATH=$PWD .venv/bin/python benchmarks/cgroup_cycle.py             # this tree
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
import time

import benchlib as bl

from sandboxd.sandbox import cgroups


def rounds(cg: cgroups.BoxCgroup, n: int, k: int) -> list[float]:
    out = []
    for _ in range(k):
        c0 = time.process_time()
        for _ in range(n):
            rc = cg.prepare(256 << 20, 64)
            rc.close_fds()
            cg.finish(rc, False)
            cg.between_runs()
        out.append((time.process_time() - c0) / n * 1e6)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="few iterations (CI smoke test)")
    p.add_argument("--json", action="store_true", help="print one JSON line on stdout (human text on stderr)")
    p.add_argument("--n", type=int, default=3000, help="iterations per round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--instance", default="bench-cgroup-cycle", help="cgroup instance name")
    a = p.parse_args(argv)
    if a.quick:
        a.n, a.rounds = 50, 2
    o, m = bl.begin(a.json)
    be = cgroups.detect(a.instance)
    if not isinstance(be, cgroups.V1):
        o.print("cgroup v1 only (v2 has no between-runs step: a leaf per run)")
        return 2
    try:
        cg = be.create_box("cycle")
        with tempfile.TemporaryDirectory(dir="/var/tmp") as d:
            procs = cg.dirs["memory"] / "cgroup.procs"
            # A shell of the group writes (and syncs) the file: its pages are charged to the group.
            sh = f"echo $$ > {procs} && head -c {8 << 20} /dev/zero > {d}/f && sync"
            subprocess.run(["sh", "-c", sh], check=True)
            per_round = rounds(cg, a.n, a.rounds)
            asyncio.run(cg.remove())
    finally:
        cgroups.remove_instance(be)
    med = bl.percentile(sorted(per_round), 50)
    o.print(f"Machine: {bl.machine_line(m)}")
    o.print(f"cgroup v1 prepare + finish + between_runs, {a.n} x {a.rounds} rounds, µs: median {med:.1f}")
    o.print("  rounds: " + " ".join(f"{x:.1f}" for x in per_round))
    o.json(bl.clean_floats({"bench": "cgroup_cycle", "machine": m, "rounds": per_round, "median_us": med}, 1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
