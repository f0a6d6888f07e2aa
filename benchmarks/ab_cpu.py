"""The daemon's own CPU per socket run of one tree against another (issue 18),
on a loaded machine: both daemons up at once (as ab_roundtrip.start makes
them), blocks of round trips of `/bin/true` in ABBA order (the load drifts
within a round: each tree goes first in every other round), the daemon's
CPU read from /proc/PID/schedstat (nanoseconds on the CPU: the main thread,
where the per-run path runs; /proc/PID/stat's clock ticks are 10 ms steps),
then the same for 8 clients (runs/s and CPU per run).  Reports medians,
per-round figures, and the load average's range.

    PYTHONPATH=$PWD:$PWD/clients/python .venv/bin/python benchmarks/ab_cpu.py BASE NEW \
        [--rounds 12] [--n 300] [--seconds 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
from pathlib import Path

import uvloop
from ab_roundtrip import start
from benchlib import summary_ms
from daemon import round_trip, throughput


def on_cpu_ns(pid: int) -> int:
    return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("base", type=Path)
    ap.add_argument("new", type=Path)
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--n", type=int, default=300, help="round trips per tree and round")
    ap.add_argument("--seconds", type=float, default=3.0, help="of each 8-client phase (0: none)")
    a = ap.parse_args()
    trees = {"base": a.base.resolve(), "new": a.new.resolve()}
    procs = {k: start(t, f"cpu-{k}") for k, t in trees.items()}
    cpu: dict[str, list[float]] = {k: [] for k in trees}
    lat: dict[str, list[int]] = {k: [] for k in trees}
    rate: dict[str, list[float]] = {k: [] for k in trees}
    cpu8: dict[str, list[float]] = {k: [] for k in trees}
    loads = [os.getloadavg()[0]]
    try:
        for _proc, sock, _ in procs.values():
            uvloop.run(round_trip(sock, 100))
        for r in range(a.rounds):
            order = list(trees) if r % 2 == 0 else list(reversed(trees))
            for k in order:
                proc, sock, _ = procs[k]
                c0 = on_cpu_ns(proc.pid)
                lat[k] += uvloop.run(round_trip(sock, a.n))
                cpu[k].append((on_cpu_ns(proc.pid) - c0) / (a.n + 20) / 1e3)
            for k in order if a.seconds else ():
                proc, sock, _ = procs[k]
                c0 = on_cpu_ns(proc.pid)
                runs, got, errors = uvloop.run(throughput(sock, 8, a.seconds))
                assert not errors, errors
                rate[k].append(runs)
                cpu8[k].append((on_cpu_ns(proc.pid) - c0) / len(got) / 1e3)
            loads.append(os.getloadavg()[0])
    finally:
        for proc, _, _ in procs.values():
            proc.terminate()
            proc.wait(60)
    print(f"load average {min(loads):.1f}-{max(loads):.1f}; {a.rounds} rounds x {a.n} (ABBA)")
    for k in trees:
        s = summary_ms(lat[k])
        rounds = " ".join(f"{x:.0f}" for x in cpu[k])
        print(f"{k:4s} socket p50 {s['p50']:.3f} ms p99 {s['p99']:.3f} ms;", end=" ")
        print(f"daemon CPU/run {statistics.median(cpu[k]):.0f} us ({rounds})")
        if a.seconds:
            rates = " ".join(f"{x:.0f}" for x in rate[k])
            print(f"{k:4s} 8 clients {statistics.median(rate[k]):.0f} runs/s ({rates});", end=" ")
            print(f"CPU/run {statistics.median(cpu8[k]):.0f} us")
    ratio = [n / b for b, n in zip(cpu["base"], cpu["new"], strict=True)]
    print(
        f"new/base daemon CPU per run: {statistics.median(cpu['new']) / statistics.median(cpu['base']):.2f}x (medians),"
        f" {statistics.median(ratio):.2f}x (median of the rounds' ratios)"
    )
    if a.seconds:
        print(
            f"new/base 8 clients: runs/s {statistics.median(rate['new']) / statistics.median(rate['base']):.2f}x,"
            f" CPU per run {statistics.median(cpu8['new']) / statistics.median(cpu8['base']):.2f}x"
        )


if __name__ == "__main__":
    main()
