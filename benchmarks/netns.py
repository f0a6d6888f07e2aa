"""What the box's fresh-per-run network namespace costs, on one held box.

  quiet     /bin/true, then a reset: the common case.  The reset's check (did
            the run open an IP socket, did lo's counters or the namespace's
            unix sockets change) is all it adds; its namespace is kept.
  network   a python3 run that makes one TCP connection over lo, then a
            reset: the worker hands over to a new one in a new namespace
            (unshare + lo up + the seccomp filter loaded again).
  socket()  in-box cost of socket(AF_INET) + close: each such call makes a
            round trip to the worker (it notes that the network was used).
  pile-up   network namespaces alive (lsns) and the kernel's unreclaimable
            slab before and after the network cycles, and 5 s later: the
            kernel frees old namespaces asynchronously, they must not pile up.

Agent CPU per cycle counts PID 1, its worker and every run it reaped
(/proc/PID/stat), at clock-tick resolution.

    .venv/bin/python benchmarks/netns.py [--quick] [--json] [--n 500]
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
from sandboxd.sandbox.box import Box
from sandboxd.schema import Limits, RunRequest

HZ = os.sysconf("SC_CLK_TCK")
TCP = (
    "import socket\nl = socket.socket(); l.bind(('127.0.0.1', 0)); l.listen()\n"
    "socket.create_connection(l.getsockname())"
)
SOCKETS = (
    "import socket, time\nt = time.perf_counter()\nfor i in range(5000):\n    socket.socket().close()\n"
    "print((time.perf_counter() - t) / 5000 * 1e6)"
)


def _ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return sum(int(x) for x in fields[11:15])  # utime stime cutime cstime


def _tree(pid: int) -> list[int]:
    out = [pid]
    for t in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{t}/children") as f:
            for c in f.read().split():
                out += _tree(int(c))
    return out


def agent_cpu_s(box: Box) -> float:
    assert box.proc is not None
    return sum(_ticks(p) for p in _tree(box.proc.pid)) / HZ


def netns_alive() -> int:
    r = subprocess.run(["lsns", "-t", "net", "-n", "-o", "NS"], capture_output=True, text=True, check=False)
    return len(r.stdout.split())


def sunreclaim_mib() -> float:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("SUnreclaim:"):
                return int(line.split()[1]) / 1024
    return float("nan")


async def cycles(box: Box, req: RunRequest, n: int) -> dict[str, Any]:
    resets: list[int] = []
    cpu0 = agent_cpu_s(box)
    t0 = time.perf_counter()
    for _ in range(n):
        r = await box.run(req)
        if r.status != "ok":
            raise RuntimeError(f"run failed: {r}")
        t = time.perf_counter_ns()
        await box.reset()
        resets.append(time.perf_counter_ns() - t)
    wall = time.perf_counter() - t0
    return {
        "reset": bl.summary_ms(resets),
        "agent_cpu_ms_per_cycle": (agent_cpu_s(box) - cpu0) / n * 1e3,
        "wall_ms_per_cycle": wall / n * 1e3,
    }


async def measure(eng: Engine, n: int) -> dict[str, Any]:
    box = await eng.box()
    try:
        quiet = RunRequest(cmd=["/bin/true"])
        network = RunRequest(cmd=["python3", "-S", "-c", TCP])
        await cycles(box, quiet, 10)  # warm caches and the worker
        res: dict[str, Any] = {"quiet": await cycles(box, quiet, n)}
        before = {"netns": netns_alive(), "sunreclaim_mib": sunreclaim_mib()}
        res["network"] = await cycles(box, network, max(n // 2, 1))
        after = {"netns": netns_alive(), "sunreclaim_mib": sunreclaim_mib()}
        await asyncio.sleep(5)
        later = {"netns": netns_alive(), "sunreclaim_mib": sunreclaim_mib()}
        res["pile_up"] = {"before": before, "after": after, "after_5s": later}
        r = await box.run(RunRequest(cmd=["python3", "-S", "-c", SOCKETS], limits=Limits(cpu_time=10, wall_time=20)))
        res["socket_us"] = float(r.stdout) if r.status == "ok" else None
        await box.reset()
        return res
    finally:
        eng.release(box)


def report(o: bl.Out, m: dict[str, Any], res: dict[str, Any]) -> None:
    o.print(bl.machine_line(m))
    o.print()
    rows = []
    for kind in ("quiet", "network"):
        c = res[kind]
        rows.append(
            [
                kind,
                bl.fmt_ms(c["reset"]["p50"]),
                bl.fmt_ms(c["reset"]["p90"]),
                f"{c['agent_cpu_ms_per_cycle']:.3f}",
                f"{c['wall_ms_per_cycle']:.3f}",
            ]
        )
    o.print(bl.markdown_table(["run + reset", "reset p50 ms", "reset p90 ms", "agent CPU ms", "wall ms"], rows))
    o.print()
    o.print(f"socket(AF_INET) + close in the box: {res['socket_us']:.1f} us")
    p = res["pile_up"]
    o.print(
        "network namespaces alive / SUnreclaim MiB: "
        f"before {p['before']['netns']} / {p['before']['sunreclaim_mib']:.0f}, "
        f"after {p['after']['netns']} / {p['after']['sunreclaim_mib']:.0f}, "
        f"5 s later {p['after_5s']['netns']} / {p['after_5s']['sunreclaim_mib']:.0f}"
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="few runs (CI smoke test: seconds, numbers meaningless)")
    p.add_argument("--json", action="store_true", help="print one JSON line on stdout (human text on stderr)")
    p.add_argument("--n", type=int, default=500, help="quiet cycles (network cycles: half as many)")
    p.add_argument("--instance", default="bench-netns", help="sandboxd instance name (own cgroups and lock)")
    a = p.parse_args(argv)
    if a.quick:
        a.n = 20
    return a


async def amain(a: argparse.Namespace) -> int:
    o, m = bl.begin(a.json)
    eng = await bl.start_engine(o, a.instance, 1)
    if eng is None:
        return 2
    try:
        res = await measure(eng, a.n)
    except RuntimeError as e:
        o.print(f"sandboxd: {e}")
        return 1
    finally:
        await eng.close()
    report(o, m, res)
    o.json(bl.clean_floats({"bench": "netns", "machine": m, "quick": a.quick, **res}))
    return 0


def main(argv: list[str] | None = None) -> int:
    return bl.run_main(amain(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
