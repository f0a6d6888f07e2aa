"""Fair share across tenants on a real daemon (issue 17).

Two tenants flood one `sandboxd serve` (2 boxes): the heavy one queues 10x the
light one's runs first (`sleep`, so a run's box time is known), a second later
the light one sends its runs.  Three
rounds: both sent as the unnamed tenant (the bearer token: no fair share, the
old FIFO-by-priority), tenants of weight 1:1, and 1:3 (the light one 3).
Reported per round: the light tenant's share of box-seconds while both had
work queued (from its first send to its last result; target: its weight's
share within 10%), and both tenants' p50 / p99 queue wait (latency minus the
run's own wall time).

--fleet: the same through a fleet: a real redis-server, `sandboxd coordinator`
(the tenants are the coordinator's) and one host daemon of 2 boxes, so the
order is the Redis claim script's fair share (sandboxd/data/fleet.lua).

    .venv/bin/python benchmarks/fair_share.py [--quick] [--json] [--fleet]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from daemon_util import Daemon, Served
from fleet_util import Coordinator, Redis

ADMIN = "bench-admin"


def pct(xs: list[float], p: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(p / 100 * len(s)))] if s else 0.0


async def flood(d: Served, keys: dict[str, str], jobs: dict[str, int], sleep: float) -> dict[str, Any]:
    done: list[tuple[str, float, float, float]] = []  # tenant, sent, finished, box wall time

    async def one(session: aiohttp.ClientSession, name: str) -> None:
        t0 = time.monotonic()
        body = {"cmd": ["sleep", str(sleep)]}
        async with session.post(f"{d.http}/v1/runs", json=body, headers={"Authorization": f"Bearer {keys[name]}"}) as r:
            res = await r.json()
            assert r.status == 200, res
        done.append((name, t0, time.monotonic(), float(res["wall_time"])))

    conn = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=600)) as s:
        # The heavy tenant's flood is queued first; the light one's runs arrive behind it.
        heavy = [asyncio.ensure_future(one(s, "heavy")) for _ in range(jobs["heavy"])]
        await asyncio.sleep(1.0)
        await asyncio.gather(*heavy, *(one(s, "light") for _ in range(jobs["light"])))
    light = "light"
    start = min(t for n, t, _, _ in done if n == light)
    end = max(f for n, _, f, _ in done if n == light)  # both backlogged from the light one's first send to its last
    box = {n: sum(w for m, _, f, w in done if m == n and start < f <= end) for n in jobs}
    waits = {n: [f - t - w for m, t, f, w in done if m == n] for n in jobs}
    return {
        "light_share": box[light] / sum(box.values()),
        "wait_ms": {n: {"p50": pct(v, 50) * 1e3, "p99": pct(v, 99) * 1e3} for n, v in waits.items()},
    }


def make(d: Served, name: str, weight: float) -> str:
    import urllib.request

    req = urllib.request.Request(
        f"{d.http}/v1/tenants",
        data=json.dumps({"name": name, "weight": weight}).encode(),
        headers={"Authorization": f"Bearer {ADMIN}", "Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(req) as r:
        return str(json.loads(r.read())["key"])


def start(cfg: Path, fleet: bool, stack: list[Served | Redis]) -> Served:
    """The server the tenants send to: a daemon, or a fleet's coordinator (with its host and Redis)."""
    if not fleet:
        d = Daemon("bench-fair", pool_size=2, config=cfg)
        stack.append(d)
        return d
    redis = Redis()
    stack.append(redis)
    stack.append(Daemon("bench-fair-host", pool_size=2, env={"SANDBOXD_FLEET": redis.url}))
    coord = Coordinator(redis.url, config=cfg)
    stack.append(coord)
    deadline = time.monotonic() + 30
    while not redis.client().zcard("{sandboxd}:hosts"):  # (the host registered)
        assert time.monotonic() < deadline, "the host never registered"
        time.sleep(0.1)
    return coord


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--json", action="store_true")
    p.add_argument("--fleet", action="store_true", help="through redis + a coordinator + one host")
    a = p.parse_args()
    light_n, sleep = (5, 0.05) if a.quick else (30, 0.1)
    heavy_n = 10 * light_n
    home = Path(os.environ.get("TMPDIR", "/tmp")) / f"bench-fair-{os.getpid()}"
    home.mkdir()
    cfg = home / "sandboxd.toml"
    cfg.write_text(f'[http]\ntoken = "{ADMIN}"\n[tenants]\nfile = "{home / "tenants.json"}"\n')
    stack: list[Served | Redis] = []
    out: dict[str, Any] = {"bench": "fair_share", "quick": a.quick, "fleet": a.fleet}
    out.update(light_jobs=light_n, heavy_jobs=heavy_n)
    try:
        d = start(cfg, a.fleet, stack)
        jobs = {"heavy": heavy_n, "light": light_n}
        rounds = {
            "no fair share (one tenant)": ({"heavy": ADMIN, "light": ADMIN}, 0.5),
            "weights 1:1": ({"heavy": make(d, "h1", 1), "light": make(d, "l1", 1)}, 0.5),
            "weights 1:3": ({"heavy": make(d, "h3", 1), "light": make(d, "l3", 3)}, 0.75),
        }
        for title, (keys, target) in rounds.items():
            r = asyncio.run(flood(d, keys, jobs, sleep))
            r["target_share"] = target
            out[title] = r
            w = r["wait_ms"]
            print(
                f"{title:28s} light share {r['light_share']:.2f} (weight's: {target:.2f})  "
                f"queue wait p50/p99 ms: light {w['light']['p50']:.0f}/{w['light']['p99']:.0f}, "
                f"heavy {w['heavy']['p50']:.0f}/{w['heavy']['p99']:.0f}",
                file=sys.stderr if a.json else sys.stdout,
            )
    finally:
        for x in reversed(stack):
            x.stop()
    if a.json:
        print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
