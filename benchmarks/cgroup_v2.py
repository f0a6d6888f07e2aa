"""cgroup v2: the fast path (the run born in its leaf by clone3 with
CLONE_INTO_CGROUP) against the write-to-cgroup.procs path, and bare
posix_spawn, in one process, interleaved blocks of `/bin/true`.

Runs on a cgroup v2 host (as root, in a delegated cgroup or at the root):
the qemu VM of tests/vm is the one here, driven by benchmarks/vm_cgroup_v2.py.

  bare      os.posix_spawn + waitpid: the floor
  fast      Engine.run(), V2 with clone_into (the default)
  migrate   Engine.run(), V2 with clone_into off: the child writes itself
            into the leaf's cgroup.procs between clone and exec (the old path)

    python benchmarks/cgroup_v2.py [--rounds 5] [--block 100] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from typing import Any

import benchlib as bl

from sandboxd.engine.engine import Engine, EngineConfig
from sandboxd.sandbox import cgroups
from sandboxd.schema import RunRequest

TRUE = ["/bin/true"]


async def start(instance: str, clone_into: bool) -> Engine:
    # The class default decides the seccomp policy the engine's boxes load at
    # start; the instance's own attribute pins it for its runs.
    cgroups.V2.clone_into = clone_into
    try:
        eng = await Engine.start(EngineConfig(instance=instance, pool_size=2, languages_dir=bl.no_languages_dir()))
    finally:
        cgroups.V2.clone_into = True
    assert isinstance(eng.backend, cgroups.V2), "needs cgroup v2"
    eng.backend.clone_into = clone_into
    return eng


async def block(name: str, eng: Engine | None, n: int, out: dict[str, list[int]]) -> None:
    if eng is None:
        bl.timed(n, out[name], bl.spawn_wait, TRUE)
        return
    for r in await bl.timed_async(n, out[name], eng.run, RunRequest(cmd=TRUE)):
        assert r.status == "ok", r


async def main(args: argparse.Namespace) -> dict[str, Any]:
    m = bl.machine()
    engines = {"fast": await start("bench-v2-fast", True), "migrate": await start("bench-v2-migrate", False)}
    samples: dict[str, list[int]] = {"bare": [], "fast": [], "migrate": []}
    try:
        for name, eng in engines.items():  # warm-up, not counted
            await block(name, eng, 20, {name: []})
        for _ in range(args.rounds):
            for name in ("bare", "fast", "migrate"):
                await block(name, engines.get(name), args.block, samples)
    finally:
        for eng in engines.values():
            await eng.close()
    res = {name: bl.summary_ms(xs) for name, xs in samples.items()}
    bare = res["bare"]
    ratios = {
        name: {"p50": res[name]["p50"] / bare["p50"], "p99": res[name]["p99"] / bare["p99"]}
        for name in ("fast", "migrate")
    }
    ratios["fast/migrate"] = {
        "p50": res["fast"]["p50"] / res["migrate"]["p50"],
        "p99": res["fast"]["p99"] / res["migrate"]["p99"],
    }
    return {"machine": m, "load_end": os.getloadavg()[0], "ms": res, "ratios": ratios}


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--block", type=int, default=100)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    out = bl.clean_floats(asyncio.run(main(a)))
    if a.json:
        print(json.dumps(out))
    else:
        print(bl.machine_line(out["machine"]), file=sys.stderr)
        rows = [[k, bl.fmt_ms(v["p50"]), bl.fmt_ms(v["p99"])] for k, v in out["ms"].items()]
        print(bl.markdown_table(["path", "p50 ms", "p99 ms"], rows))
        for k, v in out["ratios"].items():
            print(f"{k}: p50 {bl.fmt_ratio(v['p50'])}, p99 {bl.fmt_ratio(v['p99'])}")
