"""The durable job store (issue 14): async submission throughput and daemon RSS.

Throughput: 8 clients on the Unix socket submit `/bin/true` runs without
waiting (wait=false, the 202 path), in waves of --wave jobs; a wave's
acknowledgement rate (jobs/s until the last job id came back) and completion
rate (until every job of the wave is final) are measured for this checkout
(every job committed to SQLite before its acknowledgement) and for the
baseline: the same daemon from `git archive BASELINE sandboxd` (default
main), i.e. main's code path, with no store.  Baseline and durable waves
alternate, in the same run, so machine noise hits both alike.

RSS: this checkout's daemon, at the default results_ttl (600 s: no result
expires during the run), VmRSS after --rss-small jobs and after --rss-jobs
jobs; the baseline's too (it keeps every result in memory), if --rss-baseline.

    .venv/bin/python benchmarks/durable.py --quick
    .venv/bin/python benchmarks/durable.py                 # 5 waves of 2000 each, RSS at 1k and 100k
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import benchlib as bl
import uvloop
from sandboxd_client import AsyncClient, RunRequest

REPO = Path(__file__).resolve().parent.parent
STATE = Path("/var/lib/sandboxd")  # the default state_dir
CLIENTS = 8


def baseline_tree(ref: str) -> Path:
    d = Path(tempfile.mkdtemp(prefix="sandboxd-baseline-"))
    archive = subprocess.run(["git", "-C", str(REPO), "archive", ref, "sandboxd"], check=True, capture_output=True)
    subprocess.run(["tar", "-x", "-C", str(d)], input=archive.stdout, check=True)
    return d


class Daemon:
    def __init__(self, tree: Path, name: str, pool: int) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix=f"sandboxd-bench-{name}-"))
        self.sock = str(self.dir / "sandboxd.sock")
        self.instance = f"bench-{name}"
        cmd = [sys.executable, "-P", "-m", "sandboxd", "serve", "--config", "/dev/null"]
        cmd += ["--instance", self.instance]
        cmd += ["--socket", self.sock, "--http", "", "--pool-size", str(pool)]
        env = {
            **os.environ,
            "PYTHONPATH": str(tree),
            "SANDBOXD_SELFTEST": "false",
            "SANDBOXD_JOB_STORE": str(self.dir / "jobs.sqlite3"),
        }
        if tree != REPO:
            env.pop("SANDBOXD_JOB_STORE")  # (main has no such setting)
        # -P: the cwd does not go first on sys.path (PYTHONPATH says which sandboxd runs).
        log = open(self.dir / "log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log, env=env, cwd=tree)
        for _ in range(600):
            if os.path.exists(self.sock):
                time.sleep(0.5)  # (the pool warms up)
                self.check(tree)
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        self.proc.kill()
        raise SystemExit(f"daemon did not start; see {self.dir}/log")

    def check(self, tree: Path) -> None:
        """The daemon runs the code of `tree`: this checkout's writes its store, main's has none."""
        durable = (self.dir / "jobs.sqlite3").exists() or (STATE / "jobs" / f"{self.instance}.sqlite3").exists()
        if durable != (tree == REPO):
            self.proc.kill()
            raise SystemExit(f"the daemon from {tree} {'has' if durable else 'has no'} job store")

    def cpu(self) -> float:
        """The daemon's CPU seconds (user + system, all its threads; not its boxes)."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss(self) -> int:
        return bl.rss_bytes(self.proc.pid)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(60)
        shutil.rmtree(self.dir, ignore_errors=True)  # (100k results: ~40 MB of store)


async def wave(sock: str, n: int) -> tuple[float, float]:
    """Submit n runs from CLIENTS connections; (acks/s, completions/s)."""
    clients = [AsyncClient(f"unix://{sock}") for _ in range(CLIENTS)]
    for c in clients:
        await c.__aenter__()
    try:
        t0 = time.perf_counter()

        async def submitter(c: AsyncClient, k: int) -> list[str]:
            sem = asyncio.Semaphore(32)  # in flight per client

            async def one() -> str:
                async with sem:
                    return await c.start(RunRequest(cmd=["/bin/true"]))

            return list(await asyncio.gather(*(one() for _ in range(k))))

        per = [n // CLIENTS + (1 if i < n % CLIENTS else 0) for i in range(CLIENTS)]
        ids = [
            j for js in await asyncio.gather(*(submitter(c, k) for c, k in zip(clients, per, strict=True))) for j in js
        ]
        t_ack = time.perf_counter() - t0
        sem = asyncio.Semaphore(256)

        async def final(c: AsyncClient, jid: str) -> str:
            async with sem:
                return (await c.wait(jid)).state

        states = await asyncio.gather(*(final(clients[i % CLIENTS], j) for i, j in enumerate(ids)))
        t_done = time.perf_counter() - t0
        bad = [s for s in states if s != "done"]
        if bad:
            raise SystemExit(f"{len(bad)} jobs not done: {set(bad)}")
        return n / t_ack, n / t_done
    finally:
        for c in clients:
            await c.__aexit__(None, None, None)


async def throughput(args: argparse.Namespace, base: Path) -> None:
    daemons = {"baseline": Daemon(base, "base", args.pool), "durable": Daemon(REPO, "durable", args.pool)}
    res: dict[str, list[tuple[float, float, float]]] = {k: [] for k in daemons}
    try:
        for d in daemons.values():
            await wave(d.sock, min(500, args.wave))  # warm-up
        for _ in range(args.waves):
            for name, d in daemons.items():
                cpu0 = d.cpu()
                acks, done = await wave(d.sock, args.wave)
                res[name].append((acks, done, (d.cpu() - cpu0) / args.wave * 1e6))
    finally:
        for d in daemons.values():
            d.stop()
    med = {k: [statistics.median(w[i] for w in v) for i in range(3)] for k, v in res.items()}
    print(f"async submission, {args.waves} waves x {args.wave} /bin/true runs, {CLIENTS} clients, pool {args.pool}")
    for k, v in res.items():
        print(
            f"  {k:9s} medians: acks/s {med[k][0]:7.0f}  done/s {med[k][1]:6.0f}  daemon CPU/job {med[k][2]:5.0f} us"
            f"   waves (acks/s, done/s, us): {[tuple(round(x) for x in w) for w in v]}"
        )
    b, d = med["baseline"], med["durable"]
    ratios = f"acks/s {d[0] / b[0]:.3f}  done/s {d[1] / b[1]:.3f}  daemon CPU per job {d[2] / b[2]:.3f}"
    print(f"  durable/baseline: {ratios}")


async def rss(tree: Path, name: str, args: argparse.Namespace) -> None:
    d = Daemon(tree, name, args.pool)
    try:
        done, marks = 0, {}
        t0 = time.perf_counter()
        for target in (args.rss_small, args.rss_jobs):
            while done < target:
                n = min(args.wave, target - done)
                await wave(d.sock, n)
                done += n
            marks[target] = d.rss()
            took = time.perf_counter() - t0
            print(f"  {name}: RSS after {target:7d} jobs: {marks[target] / 2**20:7.1f} MiB ({took:.0f} s)")
        small, big = marks[args.rss_small], marks[args.rss_jobs]
        print(f"  {name}: RSS ratio {args.rss_jobs} / {args.rss_small} jobs: {big / small:.3f}")
    finally:
        d.stop()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--baseline", default="main", help="git ref whose daemon is the baseline (no store)")
    p.add_argument("--pool", type=int, default=4)
    p.add_argument("--wave", type=int, default=2000)
    p.add_argument("--waves", type=int, default=5)
    p.add_argument("--rss-small", type=int, default=1000)
    p.add_argument("--rss-jobs", type=int, default=100_000)
    p.add_argument("--rss-baseline", action="store_true", help="the baseline's RSS too (it grows)")
    p.add_argument("--rss-only-baseline", action="store_true", help="only the baseline's RSS")
    p.add_argument("--skip-throughput", action="store_true")
    p.add_argument("--skip-rss", action="store_true")
    p.add_argument("--quick", action="store_true", help="2 waves of 500, RSS at 1k and 5k")
    args = p.parse_args()
    if args.quick:
        args.wave, args.waves, args.rss_jobs = 500, 2, 5000
    base = baseline_tree(args.baseline)
    uvloop.install()
    try:
        if not args.skip_throughput:
            asyncio.run(throughput(args, base))
        if not args.skip_rss:
            print(f"daemon RSS at the default results_ttl, /bin/true runs in waves of {args.wave}")
            if not args.rss_only_baseline:
                asyncio.run(rss(REPO, "durable", args))
            if args.rss_baseline or args.rss_only_baseline:
                asyncio.run(rss(base, "baseline", args))
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
