"""Fleet benchmarks (issue 5): the coordinator's added latency, and a simulated fleet's throughput.

1. Latency: one real host daemon (`serve --fleet`) and one coordinator on a
   redis-server of our own (AOF, `--appendfsync always` unless told).  N sequential `/bin/true` runs straight to the
   host's socket and through the coordinator's socket, interleaved so drift
   hits both; the coordinator path's added p50/p99 is the difference.  Then
   the same for a Judge0 submission and a Piston execute over HTTP.
2. Simulation (labelled as such): 50 lightweight fake hosts x 32 slots in one
   process, the real HostWorker with an executor that completes each job at
   once without running it.  Clients keep C jobs in flight through one, then
   two real coordinators for D seconds: sustained jobs/s, and Redis CPU and
   commands per 1000 jobs (from INFO), which says where one Redis stops being
   enough: a Redis core spends that CPU per 1000 jobs, so its ceiling is
   1000 / (CPU seconds per 1000 jobs) jobs/s whatever the coordinators do.

Everything runs on this machine (2 cores here): the measured jobs/s are bound
by the Python processes sharing those cores, not by Redis.

    .venv/bin/python benchmarks/fleet.py            # ~1 min
    .venv/bin/python benchmarks/fleet.py --quick    # seconds, a smoke test
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import redis
import uvloop
from benchlib import free_port, no_redis, summary_ms
from sandboxd_client import AsyncClient, RunRequest

from sandboxd.fleet.host import HostSettings, HostWorker
from sandboxd.fleet.store import FleetStore
from sandboxd.schema import JobInfo, RunResult

TMP = Path(tempfile.mkdtemp(prefix="sandboxd-bench-fleet-"))
PROCS: list[subprocess.Popen[bytes]] = []


def spawn(name: str, args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    log = open(TMP / f"{name}.log", "wb")  # noqa: SIM115 - lives as long as the process
    p = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
    PROCS.append(p)
    return p


def wait_for(path: str, proc: subprocess.Popen[bytes], what: str) -> None:
    for _ in range(600):
        if os.path.exists(path):
            return
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    raise SystemExit(f"{what} did not start; see {TMP}")


def start_redis(fsync: str) -> tuple[str, redis.Redis]:
    port = free_port()
    spawn("redis", ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(TMP),
                    "--appendonly", "yes", "--appendfsync", fsync, "--save", ""])  # fmt: skip
    r = redis.Redis(port=port)
    for _ in range(200):
        try:
            r.ping()
            return f"redis://127.0.0.1:{port}/0", r
        except redis.ConnectionError:
            time.sleep(0.05)
    raise SystemExit("redis-server did not start")


def start_coordinator(url: str, i: int, http: str = "") -> tuple[str, int]:
    sock = str(TMP / f"coord{i}.sock")
    cmd = [sys.executable, "-m", "sandboxd", "coordinator", "--config", "/dev/null", "--fleet", url]
    p = spawn(f"coord{i}", [*cmd, "--socket", sock, "--http", http])
    wait_for(sock, p, "coordinator")
    return sock, p.pid


def start_host(url: str, http: str) -> str:
    sock = str(TMP / "host.sock")
    cmd = [sys.executable, "-m", "sandboxd", "serve", "--config", "/dev/null", "--instance", "bench-fleet"]
    cmd += ["--socket", sock, "--http", http, "--pool-size", "2", "--fleet", url, "--fleet-host-id", "bench"]
    cmd += ["--pid-file", str(TMP / "host.pid")]
    p = spawn("host", cmd, {"SANDBOXD_SELFTEST": "false"})
    wait_for(sock, p, "host daemon")
    return sock


def stop(p: subprocess.Popen[bytes]) -> None:
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


# --- 1. latency -------------------------------------------------------------------


async def latency(host_sock: str, coord_sock: str, n: int) -> dict[str, Any]:
    req = RunRequest(cmd=["/bin/true"])
    direct, fleet = [], []
    async with AsyncClient(f"unix://{host_sock}") as h, AsyncClient(f"unix://{coord_sock}") as c:
        for _ in range(20):  # warm both paths (connections, script cache)
            await h.run(req)
            await c.run(req)
        for _ in range(n):
            for client, out in ((h, direct), (c, fleet)):
                t = time.perf_counter_ns()
                r = await client.run(req)
                out.append(time.perf_counter_ns() - t)
                assert r.status == "ok", r
    d, f = summary_ms(direct), summary_ms(fleet)
    return {
        "direct": d,
        "coordinator": f,
        "added_p50_ms": f["p50"] - d["p50"],
        "added_p99_ms": f["p99"] - d["p99"],
    }


async def compat_latency(host_http: str, coord_http: str, n: int) -> dict[str, Any]:
    """A Judge0 submission (Bash `true`, wait=true) and a Piston execute, each
    straight to the host's HTTP and through the coordinator's, interleaved."""
    calls = {
        "judge0": ("/judge0/submissions?wait=true&fields=status_id", {"source_code": "true", "language_id": 46}),
        "piston": ("/piston/api/v2/execute", {"language": "bash", "version": "*", "files": [{"content": "true"}]}),
    }
    out: dict[str, Any] = {}
    async with aiohttp.ClientSession() as http:

        async def call(base: str, api: str) -> None:
            path, body = calls[api]
            async with http.post(base + path, json=body) as resp:
                got = await resp.json()
                assert resp.status in (200, 201) and (
                    got.get("status_id") == 3 or got.get("run", {}).get("code") == 0
                ), got

        for api in calls:
            direct, fleet = [], []
            for _ in range(5):
                await call(host_http, api)
                await call(coord_http, api)
            for _ in range(n):
                for base, times in ((host_http, direct), (coord_http, fleet)):
                    t = time.perf_counter_ns()
                    await call(base, api)
                    times.append(time.perf_counter_ns() - t)
            d, f = summary_ms(direct), summary_ms(fleet)
            out[api] = {
                "direct": d,
                "coordinator": f,
                "added_p50_ms": f["p50"] - d["p50"],
                "ratio_p50": f["p50"] / d["p50"],
            }
    return out


# --- 2. simulated fleet -------------------------------------------------------------


class _Done:
    def __init__(self) -> None:
        self.info = JobInfo("", "run", "done", result=RunResult("ok"))

    def cancel(self) -> None:
        pass

    async def result(self) -> JobInfo:
        return self.info


class SimExecutor:
    """A fake host: `slots` boxes, every job completes at once, nothing runs."""

    def __init__(self, slots: int) -> None:
        self.slots = slots

    def pools(self) -> dict[str, tuple[int, int]]:
        return {"sim": (self.slots, 0)}

    def pool_of(self, lang: str) -> str | None:
        return "sim"

    def languages(self) -> list[dict[str, Any]]:
        return []

    def series(self) -> list[Any]:
        return []

    def definitions(self) -> dict[str, Any]:
        return {}  # no Judge0/Piston jobs

    def start(self, kind: str, spec: bytes, deadline_left: float | None, on_test: Any, tenant: Any = None) -> _Done:
        return _Done()


async def sim_hosts(url: str, hosts: int, slots: int) -> None:
    workers = []
    for i in range(hosts):
        store = FleetStore(url)
        w = HostWorker(store, SimExecutor(slots), HostSettings(host_id=f"sim-{i:02d}", lease=10, heartbeat=1))
        await w.start()
        workers.append(w)
    stop_ev = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop_ev.set)
    await stop_ev.wait()
    await asyncio.gather(*(w.leave(1) for w in workers))
    total = sum(w.claimed_total for w in workers)
    counts = sorted(w.claimed_total for w in workers)
    print(json.dumps({"claimed": total, "min_per_host": counts[0], "max_per_host": counts[-1]}), flush=True)


async def load(socks: list[str], inflight: int, seconds: float) -> tuple[int, int, list[int]]:
    done = errors = 0
    lat: list[int] = []
    req = RunRequest(cmd=["/bin/true"])
    stop_at = time.monotonic() + seconds

    async def worker(c: AsyncClient) -> None:
        nonlocal done, errors
        while time.monotonic() < stop_at:
            t = time.perf_counter_ns()
            try:
                await c.run(req)
                done += 1
                lat.append(time.perf_counter_ns() - t)
            except Exception:
                errors += 1

    clients = [AsyncClient(f"unix://{s}") for s in socks for _ in range(4)]
    for c in clients:
        await c.__aenter__()
    try:
        await asyncio.gather(*(worker(clients[i % len(clients)]) for i in range(inflight)))
    finally:
        for c in clients:
            await c.__aexit__(None, None, None)
    return done, errors, lat


def redis_cpu(r: redis.Redis) -> tuple[float, int]:
    info = r.info("cpu")
    stats = r.info("stats")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"]), int(stats["total_commands_processed"])


def proc_cpu(pid: int) -> float:
    """User + system CPU seconds of a process so far (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def simulate(
    url: str, r: redis.Redis, coords: list[str], inflight: int, seconds: float, procs: dict[str, int]
) -> dict[str, Any]:
    cpu0, cmd0 = redis_cpu(r)
    pc0 = {name: proc_cpu(pid) for name, pid in procs.items()}
    t0 = time.monotonic()
    done, errors, lat = uvloop.run(load(coords, inflight, seconds))
    wall = time.monotonic() - t0
    cpu1, cmd1 = redis_cpu(r)
    per_k = (cpu1 - cpu0) / max(done, 1) * 1000
    # Where the 2 cores went: CPU seconds per 1000 jobs of each process.
    cpu_per_k = {name: (proc_cpu(pid) - pc0[name]) / max(done, 1) * 1000 for name, pid in procs.items()}
    return {
        "coordinators": len(coords),
        "jobs": done,
        "errors": errors,
        "jobs_per_s": done / wall,
        "latency_ms": summary_ms(lat),
        "redis_cpu_s_per_1000_jobs": per_k,
        "redis_commands_per_job": (cmd1 - cmd0) / max(done, 1),
        "one_redis_core_ceiling_jobs_per_s": 1000 / per_k if per_k > 0 else None,
        "cpu_s_per_1000_jobs": {"redis": per_k, **cpu_per_k},
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test, numbers mean nothing")
    ap.add_argument("--json", action="store_true", help="one JSON object on stdout")
    # always: what README recommends (nothing acknowledged is lost); everysec: Redis's usual trade.
    ap.add_argument("--appendfsync", choices=["always", "everysec"], default="always", help="Redis AOF fsync policy")
    ap.add_argument("--sim-hosts", nargs=3, metavar=("URL", "HOSTS", "SLOTS"), help=argparse.SUPPRESS)
    ns = ap.parse_args()
    if ns.sim_hosts:
        uvloop.run(sim_hosts(ns.sim_hosts[0], int(ns.sim_hosts[1]), int(ns.sim_hosts[2])))
        return 0
    if no_redis():
        return 2
    n, seconds, hosts, slots, inflight = (50, 2.0, 5, 4, 20) if ns.quick else (500, 10.0, 50, 32, 256)
    out: dict[str, Any] = {}
    say = (lambda *a: print(*a, file=sys.stderr)) if ns.json else print
    try:
        url, r = start_redis(ns.appendfsync)
        out["appendfsync"] = ns.appendfsync
        host_http, coord_http = (f"127.0.0.1:{free_port()}" for _ in range(2))
        coord0, pid0 = start_coordinator(url, 0, coord_http)
        host = start_host(url, host_http)
        time.sleep(1.5)  # the host registers and its first heartbeat lands
        lat = uvloop.run(latency(host, coord0, n))
        out["latency"] = lat
        d, f = lat["direct"], lat["coordinator"]
        say(f"/bin/true, {n} runs each, interleaved (one host daemon, pool 2):")
        say(f"  direct to the host      p50 {d['p50']:.3f} ms  p99 {d['p99']:.3f} ms")
        say(f"  through the coordinator p50 {f['p50']:.3f} ms  p99 {f['p99']:.3f} ms")
        say(f"  added by the fleet path p50 {lat['added_p50_ms']:.3f} ms  p99 {lat['added_p99_ms']:.3f} ms"
            "  (target p50 <= 2 ms)")  # fmt: skip
        compat = uvloop.run(compat_latency(f"http://{host_http}", f"http://{coord_http}", max(20, n // 5)))
        out["compat"] = compat
        say(f"\nJudge0 / Piston over HTTP (Bash `true`), {max(20, n // 5)} each, interleaved:")
        for api, c in compat.items():
            d, f = c["direct"], c["coordinator"]
            say(f"  {api:7s} direct p50 {d['p50']:.2f} ms  through the coordinator p50 {f['p50']:.2f} ms  "
                f"added {c['added_p50_ms']:.2f} ms ({c['ratio_p50']:.2f}x)")  # fmt: skip
        stop(PROCS.pop())  # the real host: the simulation has the fleet to itself
        sim = spawn("sim", [sys.executable, __file__, "--sim-hosts", url, str(hosts), str(slots)])
        time.sleep(2 + hosts / 25)
        coord1, pid1 = start_coordinator(url, 1)
        out["simulation"] = {"hosts": hosts, "slots": slots, "inflight": inflight, "seconds": seconds, "runs": []}
        say(f"\nSIMULATION: {hosts} fake hosts x {slots} slots (jobs complete without running), "
            f"{inflight} jobs in flight, {seconds:.0f} s per row")  # fmt: skip
        pids = {"coordinator 0": pid0, "coordinator 1": pid1, "fake hosts": sim.pid, "clients": os.getpid()}
        for socks in ([coord0], [coord0, coord1]):
            row = simulate(url, r, socks, inflight, seconds, pids)
            out["simulation"]["runs"].append(row)
            lat_ms = row["latency_ms"]
            say(f"  {row['coordinators']} coordinator(s): {row['jobs_per_s']:7.0f} jobs/s  p50 {lat_ms['p50']:.2f} ms  "
                f"p99 {lat_ms['p99']:.2f} ms  errors {row['errors']}")  # fmt: skip
            say(f"    Redis: {row['redis_cpu_s_per_1000_jobs']:.3f} CPU-s per 1000 jobs, "
                f"{row['redis_commands_per_job']:.1f} commands per job (Lua's included) -> one Redis core "
                f"tops out near {row['one_redis_core_ceiling_jobs_per_s']:.0f} jobs/s")  # fmt: skip
            say("    CPU-s per 1000 jobs: " + ", ".join(f"{k} {v:.3f}" for k, v in row["cpu_s_per_1000_jobs"].items()))
        stop(sim)
        PROCS.remove(sim)
        last = (TMP / "sim.log").read_text().strip().splitlines()[-1]
        out["simulation"]["spread"] = json.loads(last)
        say(f"  spread of claims over the fake hosts: {last}")
    finally:
        for p in reversed(PROCS):
            stop(p)
        shutil.rmtree(TMP, ignore_errors=True)
    if ns.json:
        print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
