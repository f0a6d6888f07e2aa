"""Daemon benchmarks (issue 3): socket round trip, throughput, the seed scenario, 40 clients.

Starts its own `sandboxd serve` (instance "bench-daemon"), measures, stops it.
Baselines (bare posix_spawn) are measured in the same run on the same machine.

    .venv/bin/python benchmarks/daemon.py            # full
    .venv/bin/python benchmarks/daemon.py --quick    # seconds, for a smoke test
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import uvloop
from benchlib import percentile, summary_ms
from sandboxd_client import AsyncClient, RunRequest, Submission, TestCase

ECHO_C = b"""#include <stdio.h>
int main(void) { char b[4096]; size_t n; while ((n = fread(b, 1, sizeof b, stdin)) > 0) fwrite(b, 1, n, stdout); }
"""


def start_daemon(pool: int, timeout: float = 15.0) -> tuple[subprocess.Popen[bytes], str]:
    d = tempfile.mkdtemp(prefix="sandboxd-bench-")
    sock = f"{d}/sandboxd.sock"
    cmd = [sys.executable, "-m", "sandboxd", "serve", "--config", "/dev/null", "--instance", "bench-daemon"]
    cmd += ["--socket", sock, "--http", "", "--pool-size", str(pool), "--log-format", "json"]
    cmd += ["--pid-file", f"{d}/sandboxd.pid"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(f"{d}/log", "wb"))  # noqa: SIM115
    for _ in range(int(timeout / 0.05)):
        if os.path.exists(sock):
            return proc, sock
        time.sleep(0.05)
    proc.kill()
    raise SystemExit(f"daemon did not start; see {d}/log")


def bare_true(n: int) -> list[int]:
    out = []
    for _ in range(n):
        t = time.perf_counter_ns()
        pid = os.posix_spawn("/bin/true", ["/bin/true"], {})
        os.waitpid(pid, 0)
        out.append(time.perf_counter_ns() - t)
    return out


def bare_echo(binary: str, data: bytes) -> bytes:
    """What a bare judge does per test: spawn with stdin, capture stdout, wait."""
    r_in, w_in = os.pipe()
    r_out, w_out = os.pipe()
    pid = os.posix_spawn(
        binary, [binary], {}, file_actions=[(os.POSIX_SPAWN_DUP2, r_in, 0), (os.POSIX_SPAWN_DUP2, w_out, 1)]
    )
    os.close(r_in)
    os.close(w_out)
    os.write(w_in, data)
    os.close(w_in)
    chunks = []
    while b := os.read(r_out, 65536):
        chunks.append(b)
    os.close(r_out)
    os.waitpid(pid, 0)
    return b"".join(chunks)


async def round_trip(sock: str, n: int, walls: list[float] | None = None) -> list[int]:
    """ns per `/bin/true` round trip, after 20 unmeasured; walls: gets each run's in-box wall_time (ms)."""
    async with AsyncClient(f"unix://{sock}") as c:
        for _ in range(20):
            await c.run(RunRequest(cmd=["/bin/true"]))
        out = []
        for _ in range(n):
            t = time.perf_counter_ns()
            r = await c.run(RunRequest(cmd=["/bin/true"]))
            out.append(time.perf_counter_ns() - t)
            assert r.status == "ok", r
            if walls is not None:
                walls.append(r.wall_time * 1e3)
        return out


async def throughput(sock: str, clients: int, seconds: float) -> tuple[float, list[int], int]:
    lat: list[int] = []
    errors = 0
    stop = time.monotonic() + seconds

    async def worker() -> None:
        nonlocal errors
        async with AsyncClient(f"unix://{sock}") as c:
            while time.monotonic() < stop:
                t = time.perf_counter_ns()
                r = await c.run(RunRequest(cmd=["/bin/true"]))
                lat.append(time.perf_counter_ns() - t)
                errors += r.status != "ok"

    t0 = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(clients)))
    return len(lat) / (time.monotonic() - t0), lat, errors


async def seed(sock: str, subs: int, tests: int, concurrency: int) -> tuple[float, int, list[str]]:
    """`subs` submissions of the same C echo program (compiled once: the compile
    cache), `tests` tests each; returns wall seconds, runs, verdicts."""
    sem = asyncio.Semaphore(concurrency)
    verdicts: list[str] = []
    cases = [TestCase(f"{i} {i * 7}\n".encode(), f"{i} {i * 7}\n".encode()) for i in range(tests)]
    async with AsyncClient(f"unix://{sock}") as c:
        await c.submit(Submission(lang="c", source=ECHO_C, tests=cases[:1]))  # warm the compile cache

        async def one() -> None:
            async with sem:
                verdicts.append((await c.submit(Submission(lang="c", source=ECHO_C, tests=cases))).verdict)

        t0 = time.monotonic()
        await asyncio.gather(*(one() for _ in range(subs)))
        return time.monotonic() - t0, subs * tests, verdicts


async def python_class(sock: str, clients: int, per_client: int) -> tuple[list[int], int]:
    lat: list[int] = []
    errors = 0
    src = b"import sys\nprint(sum(int(x) for x in sys.stdin.read().split()))\n"

    async def student(i: int) -> None:
        nonlocal errors
        async with AsyncClient(f"unix://{sock}") as c:
            for k in range(per_client):
                tests = [TestCase(f"{i} {k} {j}".encode(), str(i + k + j).encode()) for j in range(3)]
                t = time.perf_counter_ns()
                try:
                    r = await c.submit(Submission(lang="python3", source=src, tests=tests))
                    errors += r.verdict != "AC"
                except Exception:
                    errors += 1
                lat.append(time.perf_counter_ns() - t)

    await asyncio.gather(*(student(i) for i in range(clients)))
    return lat, errors


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--pool", type=int, default=2 * (os.cpu_count() or 1))
    a = ap.parse_args()
    n_rt, secs, subs, tests, per = (200, 2.0, 20, 20, 1) if a.quick else (2000, 10.0, 1000, 20, 3)
    proc, sock = start_daemon(a.pool)
    try:
        bare = summary_ms(bare_true(n_rt))
        rt = summary_ms(uvloop.run(round_trip(sock, n_rt)))
        print(f"## Round trip of /bin/true over the Unix socket (one connection, {n_rt} runs)\n")
        print("| path | p50 ms | p99 ms | x bare p50 |\n|---|---|---|---|")
        print(f"| bare posix_spawn+wait | {bare['p50']:.3f} | {bare['p99']:.3f} | 1.00 |")
        print(f"| sandboxd socket round trip | {rt['p50']:.3f} | {rt['p99']:.3f} | {rt['p50'] / bare['p50']:.2f} |\n")

        rate, lat, errs = uvloop.run(throughput(sock, 32, secs))
        ls = summary_ms(lat)
        print(f"## Throughput: 32 clients, {secs:.0f} s, pool {a.pool}\n")
        print(f"{rate:.0f} runs/s, p50 {ls['p50']:.2f} ms, p99 {ls['p99']:.2f} ms, errors {errs}\n")

        wall, runs, verdicts = uvloop.run(seed(sock, subs, tests, concurrency=8))
        # Bare: the same runs, same binary, as many in parallel as the daemon's pool.
        with tempfile.TemporaryDirectory() as d:
            exe = str(Path(d) / "echo")
            subprocess.run(["gcc", "-O2", "-o", exe, "-x", "c", "-"], input=ECHO_C, check=True)
            data = [f"{i} {i * 7}\n".encode() for i in range(tests)] * subs
            # Processes, not threads: CPython holds the GIL inside posix_spawn.
            cores = os.cpu_count() or 1
            t0 = time.monotonic()
            with multiprocessing.Pool(cores) as mp:
                outs = mp.starmap(bare_echo, [(exe, x) for x in data], chunksize=50)
            bare_wall = time.monotonic() - t0
            assert outs == data
        bad = [v for v in verdicts if v != "AC"]
        print(f"## Seed scenario: {subs} submissions x {tests} tests of a C echo program (compiled once, cached)\n")
        print("| path | wall s | runs/s | x bare |\n|---|---|---|---|")
        print(f"| bare posix_spawn, {os.cpu_count()} processes | {bare_wall:.2f} | {runs / bare_wall:.0f} | 1.00 |")
        print(f"| sandboxd submissions | {wall:.2f} | {runs / wall:.0f} | {wall / bare_wall:.2f} |")
        print(f"\nverdicts not AC: {len(bad)}\n")

        lat, errs = uvloop.run(python_class(sock, 40, per))
        xs = sorted(x / 1e6 for x in lat)
        print(f"## 40 concurrent clients submitting Python (3 tests each, {per} per client)\n")
        print(f"{len(xs)} submissions, errors {errs}, p50 {percentile(xs, 50):.0f} ms, p99 {percentile(xs, 99):.0f} ms")
    finally:
        proc.terminate()
        proc.wait(60)


if __name__ == "__main__":
    main()
