"""Per-run cost of one tree against another (issue 18), measured in the same run:
both daemons up at once, rounds alternating with bare posix_spawn, so the
machine's noise falls on all three.  Per round and tree: the Unix socket round
trip of `/bin/true` (Python AsyncClient, a fresh idempotency key per call, as
the client sends), the HTTP round trip (POST /v1/runs, keep-alive, keyed), and
the daemon's CPU per run (utime+stime of its process over the round); then
8 socket clients for --seconds against bare posix_spawn from 8 threads
(runs/s, and the daemon's CPU per run under that load).  Each daemon has its
own default pool (2 boxes per core; `--pool N` to change it).  Before stop 30
this script gave them 2: with 8 clients on 2 cores, the 2 boxes then waited
for the daemon ~21% of the time (perf: the CPUs idle), and the 8-client figure
read 0.47x bare against 0.59x at the shipped default.

    git -C /work/main worktree add --detach /tmp/base lead
    PYTHONPATH=$PWD:$PWD/clients/python .venv/bin/python benchmarks/ab_roundtrip.py /tmp/base . [--rounds 6] [--n 300]
"""

from __future__ import annotations

import argparse
import http.client
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import uvloop
from benchlib import steal_jiffies, steal_share, summary_ms
from daemon import bare_true, round_trip, throughput
from http_overhead import free_port, wait_ready

BODY = b'{"cmd": ["/bin/true"]}'


def start(
    tree: Path, name: str, pool: int | None = None, prefix: list[str] | None = None
) -> tuple[subprocess.Popen[bytes], str, int]:
    """A daemon of `tree`; pool None: the daemon's own default (2 per core).
    prefix: what runs sandboxd's command line (timeline.py's marking wrapper)."""
    d, port = tempfile.mkdtemp(prefix=f"sandboxd-bench-ab-{name}-"), free_port()
    env = {**os.environ, "PYTHONPATH": str(tree), "SANDBOXD_SELFTEST": "false", "SANDBOXD_JOB_STORE": f"{d}/j.sqlite3"}
    sock = f"{d}/s.sock"
    # (the pid in the instance name: two A/Bs at once must not share cgroups or uid leases)
    inst = f"bench-ab-{name}-{os.getpid()}"
    cmd = [*(prefix or [sys.executable, "-m", "sandboxd"]), "serve", "--config", "/dev/null", "--instance", inst]
    cmd += ["--socket", sock, "--http", f"127.0.0.1:{port}", "--pid-file", f"{d}/p.pid"]
    cmd += [] if pool is None else ["--pool-size", str(pool)]
    proc = subprocess.Popen(cmd, cwd=tree, env=env, stdout=subprocess.DEVNULL, stderr=open(f"{d}/log", "wb"))  # noqa: SIM115
    wait_ready(proc, port, f"{name}: the daemon did not start (log in {d})")
    return proc, sock, port


def cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def http_trip(port: int, n: int) -> list[int]:
    c = http.client.HTTPConnection("127.0.0.1", port)
    out = []
    for i in range(n + 20):
        t = time.perf_counter_ns()
        c.request("POST", "/v1/runs", BODY, {"Content-Type": "application/json", "Idempotency-Key": str(uuid.uuid4())})
        r = c.getresponse()
        r.read()
        if i >= 20:
            out.append(time.perf_counter_ns() - t)
        assert r.status == 200, r.status
    c.close()
    return out


def bare_rate(threads: int, seconds: float) -> float:
    """Runs/s of posix_spawn + waitpid of /bin/true from `threads` threads (both release the GIL)."""
    stop, count, lock = time.monotonic() + seconds, [0], threading.Lock()

    def worker() -> None:
        n = 0
        while time.monotonic() < stop:
            os.waitpid(os.posix_spawn("/bin/true", ["/bin/true"], {}), 0)
            n += 1
        with lock:
            count[0] += n

    t0 = time.monotonic()
    with ThreadPoolExecutor(threads) as pool:
        for f in [pool.submit(worker) for _ in range(threads)]:
            f.result()
    return count[0] / (time.monotonic() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("base", type=Path)
    ap.add_argument("new", type=Path)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--seconds", type=float, default=3.0, help="of each 8-client throughput phase (0: none)")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--pool", type=int, help="boxes per daemon (default: the daemon's own, 2 per core)")
    a = ap.parse_args()
    trees = {"base": start(a.base.resolve(), "base", a.pool), "new": start(a.new.resolve(), "new", a.pool)}
    lat: dict[str, list[int]] = {"bare": []}
    cpu_us: dict[str, list[float]] = {}
    rates: dict[str, list[float]] = {"bare": []}
    stolen = steal_jiffies()
    try:
        for _ in range(a.rounds):
            lat["bare"] += bare_true(a.n)
            for name, (proc, sock, port) in trees.items():
                c0 = cpu(proc.pid)
                lat.setdefault(f"{name} socket", []).extend(uvloop.run(round_trip(sock, a.n)))
                cpu_us.setdefault(name, []).append((cpu(proc.pid) - c0) / (a.n + 20) * 1e6)
                lat.setdefault(f"{name} http", []).extend(http_trip(port, a.n))
            if a.seconds:
                rates["bare"].append(bare_rate(a.clients, a.seconds))
                for name, (proc, sock, _) in trees.items():
                    c0 = cpu(proc.pid)
                    rate, got, errors = uvloop.run(throughput(sock, a.clients, a.seconds))
                    assert not errors, errors
                    rates.setdefault(name, []).append(rate)
                    cpu_us.setdefault(f"{name} under {a.clients} clients", []).append(
                        (cpu(proc.pid) - c0) / len(got) * 1e6
                    )
    finally:
        for proc, _, _ in trees.values():
            proc.terminate()
            proc.wait(60)
    bare = summary_ms(lat["bare"])
    steal = steal_share(stolen, steal_jiffies())
    pool = a.pool or f"the default ({2 * (os.cpu_count() or 1)})"
    load = os.getloadavg()[0]
    print(f"load average {load:.2f}, steal {100 * steal:.1f}% of the CPUs; {a.rounds} rounds x {a.n}, pool {pool}")
    for what, xs in lat.items():
        s = summary_ms(xs)
        print(
            f"{what:12s} p50 {s['p50']:.3f} ms p99 {s['p99']:.3f} ms p99.9 {s['p99.9']:.2f} ms max {s['max']:.1f} ms"
            f"  x{s['p50'] / bare['p50']:.2f} p50, x{s['p99'] / bare['p99']:.2f} p99"
        )
    for name, us in cpu_us.items():
        print(f"{name}: daemon CPU per socket run, median {statistics.median(us):.0f} us")
    if a.seconds:
        bare_rate_ = statistics.median(rates["bare"])
        for name, rs in rates.items():
            r = statistics.median(rs)
            print(f"{name:5s} {a.clients} callers: {r:.0f} runs/s (median), x{r / bare_rate_:.2f} bare")


if __name__ == "__main__":
    main()
