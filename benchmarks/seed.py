"""The seed scenario on its own (issue 18): N submissions x T tests of a C echo
program through a daemon, against the same runs done bare, alternating.

Starts its own `sandboxd serve` (instance "bench-daemon", as daemon.py), warms
the compile cache with one submission, then alternates a sandboxd round and a
bare round (`--rounds`, default 3) and reports each round, the medians and the
load average before and after every round, so a noisy round is visible.

Bare: the same runs (spawn with stdin, read stdout, wait, compare) of the same
binary compiled by the host's gcc, from as many processes as the machine has
cores.  sandboxd: `--concurrency` submissions in flight from one client.

    .venv/bin/python benchmarks/seed.py                    # 1000 x 20, 3 rounds
    .venv/bin/python benchmarks/seed.py --subs 100 --rounds 2
    .venv/bin/python benchmarks/seed.py --profile out.txt  # py-spy the daemon during the first sandboxd round
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import signal
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import uvloop
from benchlib import percentile, steal_jiffies, steal_share
from daemon import ECHO_C, bare_echo, start_daemon
from sandboxd_client import AsyncClient, Submission, TestCase


def cases(tests: int) -> list[bytes]:
    return [f"{i} {i * 7}\n".encode() for i in range(tests)]


async def sandboxd_round(sock: str, subs: int, tests: int, concurrency: int) -> tuple[float, list[float], int]:
    """Wall seconds, per-submission latencies (ms), submissions not AC."""
    sem = asyncio.Semaphore(concurrency)
    tc = [TestCase(x, x) for x in cases(tests)]
    lat: list[float] = []
    bad = 0
    async with AsyncClient(f"unix://{sock}") as c:
        await c.submit(Submission(lang="c", source=ECHO_C, tests=tc[:1]))  # the compile cache: a hit from here on

        async def one() -> None:
            nonlocal bad
            async with sem:
                t = time.perf_counter()
                r = await c.submit(Submission(lang="c", source=ECHO_C, tests=tc))
                lat.append((time.perf_counter() - t) * 1e3)
                bad += r.verdict != "AC" or len(r.tests) != tests

        t0 = time.monotonic()
        await asyncio.gather(*(one() for _ in range(subs)))
        return time.monotonic() - t0, lat, bad


def bare_round(exe: str, subs: int, tests: int) -> float:
    data = cases(tests) * subs
    t0 = time.monotonic()
    # Processes, not threads: CPython holds the GIL inside posix_spawn.
    with multiprocessing.Pool(os.cpu_count() or 1) as mp:
        outs = mp.starmap(bare_echo, [(exe, x) for x in data], chunksize=50)
    wall = time.monotonic() - t0
    assert outs == data
    return wall


def host_cpu() -> float:
    """CPU seconds the whole machine spent busy (all processes, kernel included)."""
    f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(f) - f[3] - f[4]) / os.sysconf("SC_CLK_TCK")  # minus idle and iowait


def proc_cpu(pid: int) -> float:
    """CPU seconds of one process (all its threads)."""
    f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def boxes_cpu() -> float:
    """CPU seconds of what ran in the instance's boxes (cgroup v1 cpuacct; 0 where absent)."""
    try:
        return int(Path("/sys/fs/cgroup/cpuacct/sandboxd/bench-daemon/cpuacct.usage").read_text()) / 1e9
    except OSError:
        return 0.0


def self_cpu() -> float:
    t = os.times()
    return t.user + t.system


def profile(pid: int, out: str, seconds: int) -> subprocess.Popen[bytes]:
    spy = str(Path(__file__).resolve().parent.parent / ".venv/bin/py-spy")
    cmd = [spy, "record", "-p", str(pid), "-f", "raw", "-o", out, "-r", "200", "-d", str(seconds), "--nonblocking"]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--subs", type=int, default=1000)
    ap.add_argument("--tests", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--concurrency", type=int, default=8, help="submissions in flight")
    ap.add_argument("--pool", type=int, default=2 * (os.cpu_count() or 1))
    ap.add_argument("--profile", metavar="FILE", help="py-spy raw profile of the daemon, first sandboxd round")
    a = ap.parse_args()
    proc, sock = start_daemon(a.pool)
    rows: list[tuple[int, float, float, str, str]] = []
    lat_all: list[float] = []
    cpu: list[tuple[float, ...]] = []
    try:
        with tempfile.TemporaryDirectory() as d:
            exe = str(Path(d) / "echo")
            subprocess.run(["gcc", "-O2", "-o", exe, "-x", "c", "-"], input=ECHO_C, check=True)
            for k in range(a.rounds):
                l0, s0 = os.getloadavg()[0], steal_jiffies()
                spy = profile(proc.pid, a.profile, 10**6) if a.profile and k == 0 else None
                h0, d0, c0, b0 = host_cpu(), proc_cpu(proc.pid), self_cpu(), boxes_cpu()
                wall, lat, bad = uvloop.run(sandboxd_round(sock, a.subs, a.tests, a.concurrency))
                h1, d1, c1, b1 = host_cpu(), proc_cpu(proc.pid), self_cpu(), boxes_cpu()
                if spy is not None:
                    spy.send_signal(signal.SIGINT)  # (SIGTERM would lose the profile)
                    spy.wait(30)
                l1, s1 = os.getloadavg()[0], steal_jiffies()
                bare = bare_round(exe, a.subs, a.tests)
                h2 = host_cpu()
                l2, s2 = os.getloadavg()[0], steal_jiffies()
                assert bad == 0, f"{bad} submissions not AC"
                lat_all += lat
                st0, st1 = 100 * steal_share(s0, s1), 100 * steal_share(s1, s2)
                rows.append((k + 1, wall, bare, f"{l0:.1f}/{l1:.1f}, {st0:.0f}%", f"{l1:.1f}/{l2:.1f}, {st1:.0f}%"))
                n = a.subs * a.tests / 1e6  # CPU per run in microseconds
                cpu.append(((h1 - h0) / n, (d1 - d0) / n, (c1 - c0) / n, (b1 - b0) / n, (h2 - h1) / n))
    finally:
        proc.terminate()
        proc.wait(60)
    runs = a.subs * a.tests
    print(f"## Seed: {a.subs} submissions x {a.tests} tests, C echo, pool {a.pool}, {a.concurrency} in flight\n")
    print("| round | sandboxd s | load before/after, steal | bare s | load before/after, steal | x bare |")
    print("|---|---|---|---|---|---|")
    for k, w, b, ls, lb in rows:
        print(f"| {k} | {w:.2f} | {ls} | {b:.2f} | {lb} | {w / b:.2f} |")
    w = statistics.median(r[1] for r in rows)
    b = statistics.median(r[2] for r in rows)
    xs = sorted(lat_all)
    print(f"\nmedian: sandboxd {w:.2f} s ({runs / w:.0f} runs/s), bare {b:.2f} s ({runs / b:.0f} runs/s): {w / b:.2f}x")
    print("\nCPU per run, µs: the whole machine during the round (other helpers' work included), of it")
    print("the daemon, the client, the boxes' cgroups (the programs, from joining it to exit); bare: the whole machine")
    for k, (h, d, c, bx, hb) in enumerate(cpu):
        parts = f"daemon {d:.0f}, client {c:.0f}, boxes {bx:.0f}"
        print(f"  round {k + 1}: sandboxd {h:.0f} ({parts}), bare {hb:.0f}")
    print(f"per-submission latency p50 {percentile(xs, 50):.1f} ms, p99 {percentile(xs, 99):.1f} ms; 0 not AC")


if __name__ == "__main__":
    main()
