"""How long a big job's acceptance holds the event loop (issue 13): the work
proportional to the request's size that sandboxd.jobs.accept does for a keyed
run of N MiB stdin (its fingerprint and its stored bytes), inline as before
(fingerprint() and encode_spec(): two encodes and a hash on the loop) and as
now (encode(): one encode and the hash, in a thread above INLINE_BYTES).
Reported: the wall time of each and the longest gap a 1 ms ticker on the same
loop saw while it ran (what /healthz would wait), median of --rounds.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/accept_stall.py [--mib 40] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable

from sandboxd.engine.budget import nbytes
from sandboxd.jobs.accept import encode
from sandboxd.jobs.fingerprint import fingerprint
from sandboxd.jobs.table import encode_spec
from sandboxd.schema import RunRequest


async def stall(work: Callable[[], Awaitable[object]]) -> tuple[float, float]:
    """(wall seconds of work, longest gap between ticks meanwhile)."""
    worst, running = 0.0, True

    async def ticker() -> None:
        nonlocal worst
        last = time.perf_counter()
        while running:
            await asyncio.sleep(0.001)
            now = time.perf_counter()
            worst, last = max(worst, now - last), now

    t = asyncio.ensure_future(ticker())
    await asyncio.sleep(0.01)
    t0 = time.perf_counter()
    await work()
    wall = time.perf_counter() - t0
    running = False
    await t
    return wall, worst


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=int, default=40)
    ap.add_argument("--rounds", type=int, default=5)
    a = ap.parse_args()
    req = RunRequest(cmd=["wc", "-c"], stdin=b"x" * (a.mib << 20))
    size = nbytes(req)

    async def inline() -> object:
        return fingerprint("run", req, None), encode_spec(req)

    async def now() -> object:
        return await encode("run", req, None, True, size)

    async def rounds() -> dict[str, list[tuple[float, float]]]:
        out: dict[str, list[tuple[float, float]]] = {"inline (lead)": [], "encode() (accept)": []}
        for _ in range(a.rounds):
            out["inline (lead)"].append(await stall(inline))
            out["encode() (accept)"].append(await stall(now))
        return out

    for name, xs in asyncio.run(rounds()).items():
        wall = statistics.median(w for w, _ in xs) * 1e3
        gap = statistics.median(g for _, g in xs) * 1e3
        print(f"{name:20s} {a.mib} MiB keyed run: {wall:7.1f} ms of work, the loop held {gap:7.1f} ms (median)")


if __name__ == "__main__":
    main()
