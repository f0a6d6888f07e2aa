"""Runs per second of `/bin/true` through Engine.run() with the pool busy.

K concurrent callers (default 8) share a pool of P warm boxes (default 4), so
runs queue for boxes and every box is reset between runs while others run:
the daemon's steady state under load.  The run goes on for a fixed time
(default 5 s, after a short unmeasured warm-up), bounded by --max-runs.

Also reported: where the CPU went (this process = the daemon's Python side;
the rest of the machine = agents, programs, kernel work, other load) and, for
scale, what bare posix_spawn manages from one and from two processes.

    .venv/bin/python benchmarks/throughput.py [--quick] [--json] [--callers 8] [--seconds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from typing import Any

import benchlib as bl

from sandboxd.engine.engine import Engine
from sandboxd.schema import RunRequest

CMD = ["/bin/true"]
TARGET_RUNS_PER_S = 1000.0


async def load(eng: Engine, callers: int, seconds: float, max_runs: int) -> dict[str, Any]:
    """K callers, each looping eng.run() until the time or run budget is spent."""
    lat: list[int] = []
    statuses: dict[str, int] = {}
    stop_at = time.monotonic() + seconds
    budget = [max_runs]
    req = RunRequest(cmd=CMD)

    async def caller() -> None:
        clock = time.perf_counter_ns
        while time.monotonic() < stop_at and budget[0] > 0:
            budget[0] -= 1
            t0 = clock()
            r = await eng.run(req)
            lat.append(clock() - t0)
            statuses[r.status] = statuses.get(r.status, 0) + 1

    cpu0 = bl.cpu_seconds_self_and_children()
    sys0 = bl.system_cpu_busy()
    t0 = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(callers)))
    wall = time.perf_counter() - t0
    cpu1 = bl.cpu_seconds_self_and_children()
    sys1 = bl.system_cpu_busy()
    busy, total = sys1[0] - sys0[0], sys1[1] - sys0[1]
    ncpu = os.cpu_count() or 1
    n = len(lat)
    return {
        "callers": callers,
        "runs": n,
        "seconds": wall,
        "runs_per_s": n / wall if wall else 0.0,
        "latency_ms": bl.summary_ms(lat),
        "statuses": statuses,
        # The daemon's own CPU (Python + uvloop), in cores: 1.0 = one core saturated.
        "daemon_cpu_cores": (cpu1[0] - cpu0[0]) / wall if wall else 0.0,
        # Whole machine busy, in cores (includes agents, programs, kernel, other load).
        "machine_cpu_cores": busy / total * ncpu if total else 0.0,
        "daemon_cpu_us_per_run": (cpu1[0] - cpu0[0]) / n * 1e6 if n else 0.0,
    }


# One bare spawner per process: CPython holds the GIL inside posix_spawn
# (until the child has exec'd), so threads would serialize.
_BARE_LOOP = """
import os, sys, time
argv, env, stop_at = sys.argv[1:2], {"PATH": "/usr/bin:/bin"}, time.monotonic() + float(sys.argv[2])
null = os.open("/dev/null", os.O_RDWR)
fa = [(os.POSIX_SPAWN_DUP2, null, 0), (os.POSIX_SPAWN_DUP2, null, 1), (os.POSIX_SPAWN_DUP2, null, 2)]
n = 0
while time.monotonic() < stop_at:
    os.waitpid(os.posix_spawn(argv[0], argv, env, file_actions=fa), 0)
    n += 1
print(n)
"""


def bare_rate(procs: int, seconds: float) -> dict[str, Any]:
    """posix_spawn+waitpid of /bin/true in a loop in `procs` Python processes:
    the machine's exec rate with no sandbox, the ceiling for any sandbox."""
    t0 = time.perf_counter()
    ps = [
        subprocess.Popen([sys.executable, "-c", _BARE_LOOP, CMD[0], str(seconds)], stdout=subprocess.PIPE, text=True)
        for _ in range(procs)
    ]
    counts = []
    try:
        for p in ps:
            out, _ = p.communicate(timeout=seconds + 30)
            counts.append(int(out))
    finally:
        for p in ps:
            if p.poll() is None:
                p.kill()
                p.wait()
    wall = time.perf_counter() - t0
    # Wall includes the interpreters' start-up; the loops ran `seconds` each.
    return {"procs": procs, "runs": sum(counts), "runs_per_s": sum(counts) / seconds, "wall_s": wall}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="1 s, few runs (CI smoke test)")
    p.add_argument("--json", action="store_true", help="print one JSON line on stdout (human text on stderr)")
    p.add_argument("--callers", default="8", help="concurrent callers; a comma list sweeps (e.g. 1,2,4,8,16)")
    p.add_argument("--pool-size", type=int, default=4, help="warm boxes (default 4)")
    p.add_argument("--seconds", type=float, default=5.0, help="measured time per caller count (default 5)")
    p.add_argument("--warmup", type=float, default=0.5, help="unmeasured seconds before each measurement")
    p.add_argument("--max-runs", type=int, default=100_000, help="stop a measurement after this many runs")
    p.add_argument("--no-baseline", action="store_true", help="skip the bare posix_spawn rates")
    p.add_argument("--instance", default="bench-throughput", help="sandboxd instance name")
    p.add_argument("--check-targets", action="store_true", help="exit 3 when the runs/s target is missed")
    a = p.parse_args(argv)
    if a.quick:
        a.seconds, a.warmup, a.max_runs = 1.0, 0.2, 2000
    return a


async def amain(a: argparse.Namespace) -> int:
    o, m = bl.begin(a.json)
    callers = [int(x) for x in str(a.callers).split(",")]
    base: list[dict[str, Any]] = []
    if not a.no_baseline:
        # Before the engine exists: nothing of ours competes for the CPUs.
        for procs in (1, 2):
            base.append(bare_rate(procs, min(a.seconds, 2.0)))
    results: list[dict[str, Any]] = []
    eng = await bl.start_engine(o, a.instance, a.pool_size)
    if eng is None:
        return 2
    try:
        for k in callers:
            await load(eng, k, a.warmup, a.max_runs)
            results.append(await load(eng, k, a.seconds, a.max_runs))
    finally:
        await eng.close()

    o.print(f"Machine: {bl.machine_line(m)}")
    o.print()
    o.print(f"`/bin/true` through Engine.run(), pool of {a.pool_size} boxes, {a.seconds:g} s per row:")
    o.print()
    rows = []
    for r in results:
        lat = r["latency_ms"]
        bad = {s: n for s, n in r["statuses"].items() if s != "ok"}
        rows.append(
            [
                str(r["callers"]),
                f"{r['runs_per_s']:.0f}",
                bl.fmt_ms(lat["p50"]),
                bl.fmt_ms(lat["p99"]),
                f"{r['daemon_cpu_cores']:.2f}",
                f"{r['machine_cpu_cores']:.2f}",
                f"{r['daemon_cpu_us_per_run']:.0f}",
                ", ".join(f"{s} {n}" for s, n in bad.items()) or "-",
            ]
        )
    o.print(
        bl.markdown_table(
            ["callers", "runs/s", "p50 ms", "p99 ms", "daemon CPU", "machine CPU", "daemon µs/run", "not ok"], rows
        )
    )
    o.print()
    o.print("CPU columns are in cores (2 = both CPUs busy); 'daemon' is this Python process.")
    if base:
        o.print(
            "For scale, bare posix_spawn+waitpid of /bin/true, no sandbox: "
            + ", ".join(
                f"{b['runs_per_s']:.0f} runs/s from {b['procs']} process{'es' if b['procs'] > 1 else ''}" for b in base
            )
        )
    best = max((r["runs_per_s"] for r in results), default=0.0)
    met = best >= TARGET_RUNS_PER_S
    o.print()
    o.print(
        f"Target (issue): >= {TARGET_RUNS_PER_S:.0f} runs/s on 2 cores with the pool busy: "
        f"{best:.0f} runs/s -> {'met' if met else 'MISSED'}"
    )
    not_ok = sum(n for r in results for s, n in r["statuses"].items() if s != "ok")
    o.json(
        bl.clean_floats(
            {
                "bench": "throughput",
                "machine": m,
                "quick": a.quick,
                "pool_size": a.pool_size,
                "results": results,
                "bare": base,
                "target": {"runs_per_s": TARGET_RUNS_PER_S, "best": best, "met": met},
            }
        )
    )
    if not_ok:
        o.print(f"{not_ok} runs did not end ok")
        return 1
    if a.check_targets and not met:
        return 3
    return 0


def main(argv: list[str] | None = None) -> int:
    return bl.run_main(amain(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
