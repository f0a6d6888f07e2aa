"""The tail of the `/bin/true` socket round trip, tree against tree (issue 18).

p50/p99 hide what a judge sees now and then: a run 10-25 ms late.  Each
round starts one tree's daemon alone (so the two never share the kernel's
cgroup locks at once), makes --n keyed round trips over the Unix socket, and
stops it; trees alternate, bare posix_spawn runs between them.  For each
tree: p50/p99/p99.9/max, how many round trips took over --slow ms, and of
those how many were slow inside the box (the run's own wall_time over
--slow: the agent's clone to reap, where a cgroup migration waits), so a
slow daemon or client is told apart from a slow run.

    git -C /work/main worktree add --detach /tmp/base main   # the tree to compare against
    PYTHONPATH=$PWD:$PWD/clients/python .venv/bin/python benchmarks/run_tail.py /tmp/base . [--rounds 3] [--n 5000]
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import uvloop
from ab_roundtrip import start
from benchlib import steal_jiffies, steal_share, summary_ms
from daemon import bare_true, round_trip


async def trips(sock: str, n: int) -> list[tuple[int, float]]:
    """(round trip ns, the run's in-box wall ms) of n runs."""
    walls: list[float] = []
    return list(zip(await round_trip(sock, n, walls), walls, strict=True))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("trees", type=Path, nargs="+")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--pool", type=int, default=2 * (os.cpu_count() or 1))
    ap.add_argument("--slow", type=float, default=4.0, help="ms: a round trip over this counts as slow")
    a = ap.parse_args()
    trees = {f"{k}:{t}": (str(k), t.resolve()) for k, t in enumerate(a.trees)}
    got: dict[str, list[tuple[int, float]]] = {label: [] for label in trees}
    bare: list[int] = []
    stolen, l0 = steal_jiffies(), os.getloadavg()[0]
    for _ in range(a.rounds):
        for label, (name, tree) in trees.items():
            bare += bare_true(a.n // 2)
            proc, sock, _ = start(tree, name, a.pool)
            try:
                got[label] += uvloop.run(trips(sock, a.n))
            finally:
                proc.terminate()
                proc.wait(60)
    steal = steal_share(stolen, steal_jiffies())
    load = f"load {l0:.2f} -> {os.getloadavg()[0]:.2f}, steal {100 * steal:.1f}%"
    print(f"{load}; pool {a.pool}, {a.rounds} rounds x {a.n} per tree")
    print(f"bare: {_line(bare)}")
    for label, xs in got.items():
        slow = [w for t, w in xs if t / 1e6 > a.slow]
        inbox = sum(w > a.slow for w in slow)
        print(
            f"{label}: {_line([t for t, _ in xs])};"
            f" {len(slow)} of {len(xs)} over {a.slow:g} ms, {inbox} of them slow inside the box"
        )


def _line(samples_ns: list[int]) -> str:
    s = summary_ms(samples_ns)
    head = f"p50 {s['p50']:.3f} p90 {s['p90']:.3f} p95 {s['p95']:.3f} p99 {s['p99']:.3f}"
    return f"{head} p99.9 {s['p99.9']:.2f} max {s['max']:.1f} ms"


if __name__ == "__main__":
    main()
