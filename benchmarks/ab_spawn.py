"""`spawn.py` of one tree against another's, rounds alternating (issue 13's
per-run budget: the walls' cost against the commit the issue was filed on).

Each round runs each tree's own `benchmarks/spawn.py --json` in a child
process (its own engine instance, its own agent build: the agent binary is
named by the hash of its source), the two trees' order swapped every round so
neither always runs second.  A loaded machine moves both trees' absolute
numbers; what is compared is each run's ratio to bare posix_spawn measured in
that same child, then the median of those ratios across rounds.

    git -C /work/main worktree add --detach /work/wt/base13 9a299e5
    PYTHONPATH=$PWD .venv/bin/python benchmarks/ab_spawn.py /work/wt/base13 . [--rounds 4] [--n-true 300]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

TOOLS = ("sandboxd", "sandboxd box.run")
PROGS = ("/bin/true", "python3 -c pass")


def one_run(tree: Path, name: str, a: argparse.Namespace) -> dict[str, Any]:
    """One spawn.py run of `tree`; its JSON summary."""
    cmd = [sys.executable, str(tree / "benchmarks" / "spawn.py"), "--json", "--tools", "bare," + ",".join(TOOLS)]
    inst = f"bench-abspawn-{name}-{os.getpid()}"  # (two A/Bs at once: their own instances)
    cmd += ["--n-true", str(a.n_true), "--n-python", str(a.n_python), "--instance", inst]
    env = {**os.environ, "PYTHONPATH": f"{tree}:{tree / 'clients' / 'python'}"}
    r = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True, check=False)
    if r.returncode != 0:
        raise SystemExit(f"{name}: spawn.py exited {r.returncode}:\n{r.stderr[-2000:]}")
    out: dict[str, Any] = json.loads(r.stdout.strip().splitlines()[-1])
    return out


def ratios(summary: dict[str, Any]) -> dict[tuple[str, str], dict[str, float]]:
    """(program, tool) -> p50, p99 (ms) and their ratios to bare's p50 / p99 in the same run."""
    by = {(r["program"], r["tool"]): r for r in summary["results"]}
    out: dict[tuple[str, str], dict[str, float]] = {}
    for prog in PROGS:
        bare = by[(prog, "bare")]
        for tool in ("bare", *TOOLS):
            s = by[(prog, tool)]
            out[(prog, tool)] = {
                "p50": s["p50"],
                "p99": s["p99"],
                "x50": s["p50"] / bare["p50"],
                "x99": s["p99"] / bare["p99"],
            }
    return out


def row(rnd: int, name: str, load: float, r: dict[tuple[str, str], dict[str, float]]) -> str:
    cells = [str(rnd), name, f"{load:.1f}"]
    for prog in PROGS:
        b = r[(prog, "bare")]
        cells.append(f"{b['p50']:.3f} / {b['p99']:.2f}")
        for tool in TOOLS:
            s = r[(prog, tool)]
            cells.append(f"{s['p50']:.3f} / {s['p99']:.2f} ({s['x50']:.2f}x / {s['x99']:.2f}x)")
    return "| " + " | ".join(cells) + " |"


def header() -> str:
    cols = ["round", "tree", "load"]
    for prog in PROGS:
        cols.append(f"`{prog}` bare p50 / p99 ms")
        cols += [f"`{prog}` {t} p50 / p99 ms (x bare)" for t in TOOLS]
    return "| " + " | ".join(cols) + " |\n|" + "---|" * len(cols)


def medians(runs: list[dict[tuple[str, str], dict[str, float]]]) -> dict[tuple[str, str], dict[str, float]]:
    keys = runs[0].keys()
    return {k: {f: statistics.median(r[k][f] for r in runs) for f in ("p50", "p99", "x50", "x99")} for k in keys}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("base", type=Path, help="the tree measured against (e.g. a worktree of 9a299e5)")
    p.add_argument("new", type=Path, help="the tree under test")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--n-true", type=int, default=300)
    p.add_argument("--n-python", type=int, default=100)
    a = p.parse_args()
    trees = {"base": a.base.resolve(), "new": a.new.resolve()}
    got: dict[str, list[dict[tuple[str, str], dict[str, float]]]] = {"base": [], "new": []}
    print(header(), flush=True)
    for rnd in range(1, a.rounds + 1):
        order = ["base", "new"] if rnd % 2 else ["new", "base"]
        for name in order:
            load = os.getloadavg()[0]
            r = ratios(one_run(trees[name], name, a))
            got[name].append(r)
            print(row(rnd, name, load, r), flush=True)
    med = {name: medians(rs) for name, rs in got.items()}
    print(f"\nMedians over {a.rounds} rounds (ratios to bare in the same run; new / base):")
    for prog in PROGS:
        for tool in TOOLS:
            b, n = med["base"][(prog, tool)], med["new"][(prog, tool)]
            print(
                f"  `{prog}` {tool}: p50 {b['x50']:.3f}x -> {n['x50']:.3f}x bare ({n['x50'] / b['x50'] - 1:+.1%}),"
                f" p99 {b['x99']:.2f}x -> {n['x99']:.2f}x bare p99 ({n['x99'] / b['x99'] - 1:+.1%});"
                f" ms p50 {b['p50']:.3f} -> {n['p50']:.3f}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
