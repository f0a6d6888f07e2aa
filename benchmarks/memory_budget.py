"""The daemon's memory under issue 13's loads, with and without a memory budget.

Two loads, each against a fresh `sandboxd serve` (pool 2):

  stdin    N jobs of 40 MiB stdin each (`?wait=false`, msgpack, 2 senders at a
           time), every job sleeping 5 s first so they pile up in the queue
  results  150 runs of 2 MiB output each, their results kept for results_ttl

Each load runs twice: with `memory_budget` = 256 MiB, and with 8 GiB (in
effect unbounded: what the daemon held before the budget).  Reported: jobs
accepted / refused (429), the growth of the daemon's peak RSS (VmHWM) over
its idle peak, and the slowest `/healthz` answer while the load ran (polled
every 20 ms by a process of its own, so the senders cannot delay it).  Bytes
being received are bounded by the senders here (2 at a time), not by the
budget (that is the HTTP layer's bound).

    .venv/bin/python benchmarks/memory_budget.py [--quick] [--json] [--only stdin] [--budgets 256]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import benchlib as bl
import msgspec

MiB = 1 << 20
ROOT = Path(__file__).resolve().parents[1]


class Daemon:
    def __init__(self, budget: int, tag: str) -> None:
        self.dir = tempfile.mkdtemp(prefix="sandboxd-bench-budget-")
        port = bl.free_port()
        self.url = f"http://127.0.0.1:{port}"
        cmd = [sys.executable, "-m", "sandboxd", "serve", "--config", "/dev/null"]
        cmd += ["--instance", f"bench-budget-{tag}", "--socket", "", "--http", f"127.0.0.1:{port}", "--pool-size", "2"]
        env = {**os.environ, "SANDBOXD_MEMORY_BUDGET": str(budget), "SANDBOXD_SELFTEST": "false"}
        env["SANDBOXD_PID_FILE"] = f"{self.dir}/sandboxd.pid"  # (not run_dir's: benchmarks run side by side)
        env["PYTHONPATH"] = f"{ROOT}:{env.get('PYTHONPATH', '')}"
        env = bl.scratch_store(env, self.dir)
        log = open(f"{self.dir}/log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log, env=env, cwd=ROOT)
        bl.wait_ready(self.url, self.proc, f"{self.dir}/log")

    def get(self, path: str) -> tuple[int, bytes]:
        with urllib.request.urlopen(self.url + path, timeout=30) as r:
            return r.status, r.read()

    def post(self, path: str, data: bytes) -> int:
        req = urllib.request.Request(
            self.url + path, data=data, method="POST", headers={"Content-Type": "application/msgpack"}
        )
        try:
            with urllib.request.urlopen(req, timeout=300) as r:
                r.read()
                return r.status
        except urllib.error.HTTPError as e:
            e.read()
            return e.code

    def peak_rss(self) -> int:
        return bl.rss_bytes(self.proc.pid, "VmHWM")

    def stop(self) -> None:
        bl.stop_process(self.proc)
        bl.drop_store(self.dir)


def load(d: Daemon, what: str, n: int) -> list[int]:
    if what == "stdin":
        job: dict[str, Any] = {"cmd": ["/bin/sh", "-c", "sleep 5; wc -c"], "stdin": b"x" * (40 * MiB)}
        job["limits"] = {"wall_time": 30}
        senders = 2
    else:
        job = {"cmd": ["/usr/bin/head", "-c", str(2 * MiB), "/dev/zero"], "limits": {"output": 2 * MiB}}
        senders = 4
    body = msgspec.msgpack.encode(job)
    with ThreadPoolExecutor(senders) as pool:
        return list(pool.map(lambda _: d.post("/v1/runs?wait=false", body), range(n)))


POLLER = """
import sys, time, urllib.request
while True:
    t = time.perf_counter()
    urllib.request.urlopen(sys.argv[1] + "/healthz", timeout=30).read()
    print(time.perf_counter() - t, flush=True)
    time.sleep(0.02)
"""


def measure(what: str, budget: int, n: int) -> dict[str, Any]:
    d = Daemon(budget, what)
    try:
        idle = d.peak_rss()
        polls = open(f"{d.dir}/healthz", "w+")  # noqa: SIM115
        poller = subprocess.Popen([sys.executable, "-c", POLLER, d.url], stdout=polls)
        codes = load(d, what, n)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:  # until every accepted job is final
            jobs = json.loads(d.get("/v1/status")[1])["jobs"]
            if not jobs.get("queued") and not jobs.get("running"):
                break
            time.sleep(0.5)
        poller.kill()
        poller.wait()
        polls.seek(0)
        worst = max(float(x) for x in polls.read().split())
        status = json.loads(d.get("/v1/status")[1])
        return {
            "load": what,
            "memory_budget_MiB": budget // MiB,
            "accepted": codes.count(202),
            "refused_429": codes.count(429),
            "other": len(codes) - codes.count(202) - codes.count(429),
            "peak_rss_growth_MiB": round((d.peak_rss() - idle) / MiB, 1),
            "healthz_worst_ms": round(worst * 1000, 1),
            "jobs": status["jobs"],
            "budget_used_MiB_after": round(status["memory_budget"]["used"] / MiB, 1),
        }
    finally:
        d.stop()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer jobs")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--only", choices=["stdin", "results"], help="one load")
    ap.add_argument("--budgets", default="256,8192", help="memory_budget values in MiB, comma-separated")
    a = ap.parse_args()
    sizes = {"stdin": 12 if a.quick else 24, "results": 40 if a.quick else 150}
    budgets = [int(b) * MiB for b in a.budgets.split(",")]
    rows = [measure(w, budget, n) for w, n in sizes.items() if a.only in (None, w) for budget in budgets]
    if a.json:
        print(json.dumps(rows))
        return
    print("| load | memory_budget | accepted | 429 | peak RSS growth | worst /healthz |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['load']} | {r['memory_budget_MiB']} MiB | {r['accepted']} | {r['refused_429']} "
            f"| {r['peak_rss_growth_MiB']} MiB | {r['healthz_worst_ms']} ms |"
        )


if __name__ == "__main__":
    main()
