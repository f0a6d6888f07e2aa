"""cgroup v2: the run paths of the V2 backend against each other and bare
posix_spawn, in one process, interleaved blocks of `/bin/true`.

Runs on a cgroup v2 host (as root, in a delegated cgroup or at the root):
the qemu VM of tests/vm is the one here (Linux 6.12), driven by
benchmarks/vm_cgroup_v2.py.

  bare      os.posix_spawn + waitpid: the floor
  reused    Engine.run(), the default on Linux 6.12+: the box's group serves
            every run (limits written when they change, memory.peak reset
            through its fd), the run born in it by clone3(CLONE_INTO_CGROUP)
  leaf      V2.reuse off (what kernels before 6.12 get): a leaf per run
            (mkdir, four limit writes, rmdir), born in it by clone3
  migrate   V2.reuse and clone_into off: a leaf per run, which the child
            joins by writing its cgroup.procs between clone and exec

Before Linux 6.12 (memory.peak cannot be reset) there is no `reused` path:
leaf and migrate only.  On a cgroup v1 host (the 6.1 guest booted with
systemd.unified_cgroup_hierarchy=0: vm_cgroup_v2.py --v1, or this hybrid
host) there are two: `v1`, the box's groups, one per controller, serving
every run, which the child joins by three writes to their `tasks` files (the
default), and `v1-procs`, the same through `cgroup.procs`, which takes the
kernel's host-wide threadgroup rwsem for each write.

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


PATHS = {"reused": (True, True), "leaf": (True, False), "migrate": (False, False)}  # (clone_into, reuse)


def config(instance: str) -> EngineConfig:
    return EngineConfig(instance=instance, pool_size=2, languages_dir=bl.no_languages_dir())


async def start_v1(instance: str, join_file: str) -> Engine:
    eng = await Engine.start(config(instance))
    assert isinstance(eng.backend, cgroups.V1), "not a cgroup v1 host"
    eng.backend.join_file = join_file  # (before the first run: its groups' fds are opened then)
    return eng


async def start(instance: str, clone_into: bool, reuse: bool) -> Engine:
    # The class defaults decide the seccomp policy the engine's boxes load at
    # start and whether setup() probes for reuse; the instance's own
    # attributes pin them for its runs.
    cgroups.V2.clone_into, cgroups.V2.reuse = clone_into, reuse
    try:
        eng = await Engine.start(config(instance))
    finally:
        cgroups.V2.clone_into, cgroups.V2.reuse = True, True
    assert isinstance(eng.backend, cgroups.V2), "needs cgroup v2"
    eng.backend.clone_into = clone_into
    return eng


def reusable() -> bool:
    """Linux 6.12+: the backend's own probe (a throwaway group under a scratch root)."""
    be = cgroups.detect("bench-v2-probe")  # (its setup() probes)
    try:
        return isinstance(be, cgroups.V2) and be.reuse
    finally:
        cgroups.remove_instance(be)


async def block(name: str, eng: Engine | None, n: int, out: dict[str, list[int]]) -> None:
    if eng is None:
        bl.timed(n, out[name], bl.spawn_wait, TRUE)
        return
    for r in await bl.timed_async(n, out[name], eng.run, RunRequest(cmd=TRUE)):
        assert r.status == "ok", r


async def main(args: argparse.Namespace) -> dict[str, Any]:
    m = bl.machine()
    v2 = os.path.exists("/sys/fs/cgroup/cgroup.controllers")
    if v2:
        paths = {k: v for k, v in PATHS.items() if k != "reused" or reusable()}
        engines = {name: await start(f"bench-v2-{name}", *flags) for name, flags in paths.items()}
    else:
        engines = {"v1": await start_v1("bench-v1", "tasks"), "v1-procs": await start_v1("bench-v1p", "cgroup.procs")}
    samples: dict[str, list[int]] = {"bare": [], **{name: [] for name in engines}}
    try:
        for name, eng in engines.items():  # warm-up, not counted
            await block(name, eng, 20, {name: []})
        for _ in range(args.rounds):
            for name in samples:
                await block(name, engines.get(name), args.block, samples)
    finally:
        for eng in engines.values():
            await eng.close()
    res = {name: bl.summary_ms(xs) for name, xs in samples.items()}
    bare = res["bare"]
    ratios = {name: {"p50": res[name]["p50"] / bare["p50"], "p99": res[name]["p99"] / bare["p99"]} for name in engines}
    for a, b in (("reused", "leaf"), ("leaf", "migrate"), ("v1", "v1-procs")):
        if a in res and b in res:
            ratios[f"{a}/{b}"] = {"p50": res[a]["p50"] / res[b]["p50"], "p99": res[a]["p99"] / res[b]["p99"]}
    return {
        "machine": m,
        "kernel": os.uname().release,
        "cgroup": 2 if v2 else 1,
        "load_end": os.getloadavg()[0],
        "ms": res,
        "ratios": ratios,
    }


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
        print(f"Linux {out['kernel']}, cgroup v{out['cgroup']}")
        rows = [[k, bl.fmt_ms(v["p50"]), bl.fmt_ms(v["p99"])] for k, v in out["ms"].items()]
        print(bl.markdown_table(["path", "p50 ms", "p99 ms"], rows))
        for k, v in out["ratios"].items():
            print(f"{k}: p50 {bl.fmt_ratio(v['p50'])}, p99 {bl.fmt_ratio(v['p99'])}")
