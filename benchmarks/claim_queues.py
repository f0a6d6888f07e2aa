"""What the by-hash queues cost a host's claim (issue 17's rolling-upgrade gap).

A host lists every queue it could serve in each claim: per (language, tag) the
plain queue and, since by-hash jobs wait apart (`lang|tag|hash`, so an older
host never claims one), the hash queue too: twice the queues, most of them
empty.  The claim script now skips a queue once it finds it empty.

A redis-server of our own; N run jobs enqueued, then claimed `--max-n` at a
time by a host listing the queues of `--langs` languages (one tag), for each
of: the baseline script (`--base-lua`, e.g. the previous version's
sandboxd/data/fleet.lua) with the old list, this script with the doubled list,
and the two crossed; interleaved in rounds so drift hits all.  Redis CPU
seconds per 1000 claimed jobs (from INFO), and each variant's ratio to the
baseline.  The script's own cost, not a fleet's throughput (benchmarks/fleet.py).

    git show lead:sandboxd/data/fleet.lua > /tmp/base.lua
    .venv/bin/python benchmarks/claim_queues.py --base-lua /tmp/base.lua     # ~30 s
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import tempfile
import uuid
from pathlib import Path

import redis
from benchlib import no_redis
from fleet_keys import cpu, start_redis

from sandboxd.fleet.keys import RUN_LANG, queue_name
from sandboxd.fleet.store import LUA, FleetStore

HOST, SESSION = "bench-host", "bench-session"


def queues(langs: int, by_hash: bool) -> list[str]:
    names = [RUN_LANG, *(f"lang{i}" for i in range(langs))]
    out = [queue_name(n, None) for n in names]
    return out + [queue_name(n, None, by_hash=True) for n in names] if by_hash else out


async def fill(store: FleetStore, n: int) -> None:
    q = queue_name(RUN_LANG, None)
    for _ in range(n):
        await store.enqueue(uuid.uuid4().hex, "run", "", "", q, b"\x80", 0, 1.0, 1, None, 10**9)


def claim_all(r: redis.Redis, sha: str, prefix: str, qs: list[str], max_n: int) -> int:
    args: list[str | int] = [HOST, SESSION, 60_000, max_n, 3600, len(qs)]
    for q in qs:
        args += [q, 1]
    args += [1, max_n, max_n]  # one pool: max_n boxes free of max_n
    taken = 0
    while True:
        res = r.evalsha(sha, 0, "claim", prefix, *args)
        got = (len(res) - 1) // 10
        if got == 0:
            return taken
        taken += got
        # (the claimed jobs stay running: the next claim sees only what is queued)


async def bench(port: int, base_lua: str, langs: int, n: int, rounds: int, max_n: int) -> dict[str, float]:
    store = FleetStore(f"redis://127.0.0.1:{port}/0")
    r = redis.Redis(port=port)
    prefix = store.keys.prefix
    scripts = {"base": r.script_load(base_lua), "new": r.script_load(LUA)}
    variants = {
        "base script, old queues": ("base", False),
        "new script, hash queues too": ("new", True),
        "base script, hash queues too": ("base", True),
        "new script, old queues": ("new", False),
    }
    await store.register(HOST, SESSION, 60.0, {"languages": []})
    spent = dict.fromkeys(variants, 0.0)
    claimed = dict.fromkeys(variants, 0)
    for _ in range(rounds):
        for name, (script, by_hash) in variants.items():
            await fill(store, n)
            c0 = cpu(r)
            claimed[name] += claim_all(r, scripts[script], prefix, queues(langs, by_hash), max_n)
            spent[name] += cpu(r) - c0
    await store.close()
    return {name: 1000 * spent[name] / max(1, claimed[name]) for name in variants}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base-lua", type=Path, required=True, help="the baseline fleet.lua")
    ap.add_argument("--langs", type=int, default=20, help="languages the host serves (besides runs)")
    ap.add_argument("--max-n", type=int, default=4, help="jobs per claim (the host's free boxes)")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", action="store_true")
    ns = ap.parse_args()
    if no_redis():
        return 2
    n, rounds = (200, 2) if ns.quick else (1000, 5)
    d = Path(tempfile.mkdtemp(prefix="sandboxd-bench-claims-"))
    proc, port = start_redis("everysec", d)
    try:
        res = asyncio.run(bench(port, ns.base_lua.read_text(), ns.langs, n, rounds, ns.max_n))
    finally:
        proc.kill()
        proc.wait()
        shutil.rmtree(d, ignore_errors=True)
    base = res["base script, old queues"]
    if ns.json:
        print(json.dumps({"langs": ns.langs, "max_n": ns.max_n, "redis_cpu_s_per_1000_jobs": res}))
        return 0
    print(f"claims of {n * rounds} run jobs each, {ns.max_n} per claim, {ns.langs + 1} languages listed, interleaved:")
    for name, v in res.items():
        print(f"  {name:30s} Redis {v:.3f} CPU-s / 1000 jobs  ({v / base:.2f}x the baseline)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
