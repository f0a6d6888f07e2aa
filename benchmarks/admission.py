"""Cost of admission on the per-run path: AdmissionQueue.acquire + release of
an uncontended queue (what Engine.run pays per queue, besides the box), best
of 7 rounds.  Compare checkouts in the same conditions:

    PYTHONPATH=/path/to/main .venv/bin/python benchmarks/admission.py
    PYTHONPATH=$PWD .venv/bin/python benchmarks/admission.py
"""

from __future__ import annotations

import argparse
import json
import time

import uvloop

from sandboxd.engine.scheduler import AdmissionQueue


async def best_ns(n: int) -> float:
    q = AdmissionQueue("bench", 4)
    best = float("inf")
    for _ in range(7):
        t0 = time.perf_counter()
        for _ in range(n):
            q.release(await q.acquire(0, None))
        best = min(best, (time.perf_counter() - t0) / n)
    return best * 1e9


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    ns = uvloop.run(best_ns(10_000 if a.quick else 100_000))
    print(json.dumps({"acquire_release_ns": round(ns)}) if a.json else f"{ns:.0f} ns per acquire + release")


if __name__ == "__main__":
    main()
