"""Daemon memory over many runs (issue 18): RSS of a `sandboxd serve` after
1k runs of `/bin/true` through its Unix socket, then at checkpoints up to N
(default 100k), from C concurrent clients.  Growth past the first 1k is what
the daemon keeps per run (the job store is SQLite on disk; caches must be
bounded), so the target is RSS(N) within 20% of RSS(1k).

Prints a table per checkpoint: runs, seconds, RSS (VmRSS), anonymous RSS
(RssAnon), Python heap objects cannot be seen from outside, so the number
of the daemon's open fds and its threads go next to it.

    .venv/bin/python benchmarks/rss_growth.py [--runs 100000] [--clients 8] [--pool 4]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path

import benchlib as bl
import uvloop
from daemon import start_daemon
from sandboxd_client import AsyncClient, RunRequest


def status(pid: int) -> dict[str, int]:
    out = bl.proc_status(pid, "VmRSS", "RssAnon", "RssFile", "Threads")
    out["fds"] = len(os.listdir(f"/proc/{pid}/fd"))
    return out


async def drive(sock: str, clients: int, runs: int) -> None:
    left = runs

    async def worker() -> None:
        nonlocal left
        async with AsyncClient(f"unix://{sock}") as c:
            while left > 0:
                left -= 1
                r = await c.run(RunRequest(cmd=["/bin/true"]))
                if r.status != "ok":
                    raise SystemExit(f"run failed: {r}")

    await asyncio.gather(*(worker() for _ in range(clients)))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=100_000)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--pool", type=int, default=4)
    a = ap.parse_args()
    marks = sorted({m for m in (1000, 5000, 10_000, 25_000, 50_000, a.runs) if m <= a.runs})
    proc, sock = start_daemon(a.pool, timeout=120)
    rows = []
    try:
        time.sleep(1.0)
        s0 = status(proc.pid)
        print(f"idle after start: VmRSS {s0['VmRSS']} KiB, RssAnon {s0['RssAnon']} KiB", flush=True)
        done = 0
        t0 = time.monotonic()
        print("| runs | s | load 1m | VmRSS KiB | RssAnon KiB | fds | threads | x RSS@1k |")
        print("|---|---|---|---|---|---|---|---|")
        for m in marks:
            uvloop.run(drive(sock, a.clients, m - done))
            done = m
            s = status(proc.pid)
            rows.append((m, s))
            base = rows[0][1]["VmRSS"]
            print(
                f"| {m} | {time.monotonic() - t0:.0f} | {os.getloadavg()[0]:.2f} | {s['VmRSS']} | {s['RssAnon']} "
                f"| {s['fds']} | {s['Threads']} | {s['VmRSS'] / base:.3f} |",
                flush=True,
            )
    finally:
        proc.terminate()
        proc.wait(60)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    sys.exit(main())
