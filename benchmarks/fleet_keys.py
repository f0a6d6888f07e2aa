"""What an idempotency key costs a fleet enqueue (issue 14).

A redis-server of our own (AOF, appendfsync as given, `always` by default),
the fleet script's enqueue called N times without a key and N times with a
fresh key each, interleaved in rounds so drift hits both: Redis CPU seconds
per 1000 enqueues (from INFO) and the client-side p50 of one enqueue, and
their ratio keyed / unkeyed.  One Python client, sequential calls: this is the
script's own cost, not a coordinator's throughput (benchmarks/fleet.py).

    .venv/bin/python benchmarks/fleet_keys.py            # ~20 s
    .venv/bin/python benchmarks/fleet_keys.py --quick    # a smoke test
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import redis
from benchlib import free_port, no_redis, summary_ms

from sandboxd.fleet.store import FleetStore


def start_redis(appendfsync: str, d: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    args = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(d), "--appendonly", "yes",
            "--appendfsync", appendfsync, "--save", ""]  # fmt: skip
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    r = redis.Redis(port=port)
    for _ in range(200):
        try:
            r.ping()
            return proc, port
        except redis.ConnectionError:
            time.sleep(0.05)
    raise RuntimeError("redis-server did not start")


def cpu(r: redis.Redis) -> float:
    info = r.info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


async def round_(store: FleetStore, n: int, keyed: bool, lat: list[int]) -> None:
    for _ in range(n):
        jid = uuid.uuid4().hex
        key = uuid.uuid4().hex if keyed else ""
        fp = hashlib.sha256(jid.encode()).hexdigest() if keyed else ""
        t0 = time.perf_counter_ns()
        await store.enqueue(jid, "run", "", "", "@run|", b"\x80", 0, 1.0, 1, None, 10**9, idem=key, fingerprint=fp)
        lat.append(time.perf_counter_ns() - t0)


async def bench(port: int, n: int, rounds: int) -> dict[str, dict[str, float]]:
    store = FleetStore(f"redis://127.0.0.1:{port}/0")
    r = redis.Redis(port=port)
    out: dict[str, dict[str, float]] = {}
    cpus = {"plain": 0.0, "keyed": 0.0}
    lats: dict[str, list[int]] = {"plain": [], "keyed": []}
    await round_(store, 100, True, [])  # warm-up: script loaded, connections open
    for _ in range(rounds):
        for mode in ("plain", "keyed"):
            c0 = cpu(r)
            await round_(store, n, mode == "keyed", lats[mode])
            cpus[mode] += cpu(r) - c0
    await store.close()
    for mode in cpus:
        out[mode] = {"redis_cpu_s_per_1000": 1000 * cpus[mode] / (n * rounds), **summary_ms(lats[mode])}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--appendfsync", choices=["always", "everysec"], default="always")
    ns = ap.parse_args()
    if no_redis():
        return 2
    n, rounds = (200, 2) if ns.quick else (1000, 6)
    d = Path(tempfile.mkdtemp(prefix="sandboxd-bench-keys-"))
    proc, port = start_redis(ns.appendfsync, d)
    try:
        res = asyncio.run(bench(port, n, rounds))
    finally:
        proc.kill()
        proc.wait()
        shutil.rmtree(d, ignore_errors=True)
    p, k = res["plain"], res["keyed"]
    ratio = {
        "redis_cpu": k["redis_cpu_s_per_1000"] / p["redis_cpu_s_per_1000"],
        "p50": k["p50"] / p["p50"],
    }
    if ns.json:
        print(json.dumps({"appendfsync": ns.appendfsync, **res, "ratio_keyed_to_plain": ratio}))
        return 0
    print(f"fleet enqueue, {n * rounds} each, interleaved, appendfsync {ns.appendfsync}:")
    for mode, v in res.items():
        cpu_s = v["redis_cpu_s_per_1000"]
        print(f"  {mode:5s}  Redis {cpu_s:.3f} CPU-s / 1000   p50 {v['p50']:.3f} ms  p99 {v['p99']:.3f} ms")
    print(f"  keyed / plain: Redis CPU {ratio['redis_cpu']:.2f}x, p50 {ratio['p50']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
