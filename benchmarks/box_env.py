"""What a box's environment alone adds to a program's start and exit (issue 18).

benchmarks/box_env.c starts `/bin/true` N times (vfork + exec + waitpid, as
posix_spawn does) and prints the median.  Each round runs it on the host, then
inside a box (`sandboxd run --lang c`: namespaces, the read-only rootfs,
seccomp, the box's cgroups, rlimits, the box uid), order alternating; the
ratio is box / host of the medians across rounds.  Neither the agent nor the
daemon is on the timed path, so what sandboxd's own run path costs is the
rest of `breakdown.py`'s "in-box program" and the round trip.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/box_env.py [--rounds 6] [--n 1000]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import benchlib as bl

HERE = Path(__file__).resolve().parent
SANDBOXD = Path(sys.executable).with_name("sandboxd")


def medians(cmd: list[str]) -> tuple[int, int]:
    """The helper's p50 and p90 in ns (its output's first line)."""
    p50, p90 = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.split()[:2]
    return int(p50), int(p90)


def host(binary: Path, n: int) -> tuple[int, int]:
    return medians([str(binary), str(n), "/bin/true"])


def in_box(src: Path, n: int) -> tuple[int, int]:
    return medians([str(SANDBOXD), "run", "--lang", "c", "--time", "20", "--wall", "60", str(src), str(n), "/bin/true"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--n", type=int, default=1000, help="runs of /bin/true per measurement")
    ns = ap.parse_args()
    m = bl.machine()
    print(bl.machine_line(m))
    src = HERE / "box_env.c"
    with tempfile.TemporaryDirectory() as d:
        gcc = shutil.which("gcc") or "gcc"
        binary = Path(d) / "box_env"
        subprocess.run([gcc, "-O2", "-o", str(binary), str(src)], check=True)
        got: dict[str, list[tuple[int, int]]] = {"host": [], "box": []}
        for r in range(ns.rounds):
            order = ["host", "box"] if r % 2 == 0 else ["box", "host"]
            for where in order:
                got[where].append(host(binary, ns.n) if where == "host" else in_box(src, ns.n))
    med = {
        w: (statistics.median(a for a, _ in v) / 1e3, statistics.median(b for _, b in v) / 1e3) for w, v in got.items()
    }
    rows = [[w, f"{med[w][0]:.0f}", f"{med[w][1]:.0f}", f"{med[w][0] / med['host'][0]:.3f}"] for w in ("host", "box")]
    print(f"`/bin/true`, vfork+exec+waitpid, {ns.rounds} rounds x {ns.n} runs, medians across rounds:\n")
    print(bl.markdown_table(["where", "p50 µs", "p90 µs", "x host p50"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
