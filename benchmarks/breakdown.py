"""Where the time of one warm run goes: Python side, IPC and agent, the program.

Runs `/bin/true` sequentially, first with Box.run() on one held box, then
through Engine.run(), with timing hooks wrapped around sandboxd internals
(monkeypatched at run time; nothing in the package is changed), and bare
posix_spawn interleaved as the reference.  Per run, medians in µs:

  engine overhead   Engine.run() minus Box.run(): validation, admission,
                    pool acquire/release (and the event-loop time the
                    background reset of other boxes takes while we wait)
  Python before     Box.run() entry -> request sent: files, cgroup prepare,
                    pipes, encoding, sendmsg with the fds
  agent + IPC       request sent -> reply readable, minus the agent's own
                    clone..reap time: socket wake-ups, parsing, reaping,
                    killing leftovers, the reply
  in-box program    the agent's clone..reap wall time (child setup: cgroup
                    joins, rlimits, setuid; exec; the program; exit)
  Python after      reply readable -> Box.run() returns: decoding, output
                    pipes' EOF, cgroup finish, classification

plus the background work per run that the pool does off the caller's path
(reset round trip, the cgroup's between-runs step) and the daemon's CPU per
run.  A diagnostic, not a benchmark: the hooks add a few µs, and they name
internals, so a hook whose target has moved is reported and skipped.

    .venv/bin/python benchmarks/breakdown.py [--quick] [--runs 1000] [--json]

`--cpu ROUNDS` measures only the daemon's CPU per Engine.run(), with no hooks
installed (they cost CPU of their own): ROUNDS rounds of --runs sequential
runs, each charged the process time until the pool is warm again (the
background resets of its runs), reported per round and as the median.  The
CPU a process is charged grows with the machine's load (caches, migrations):
compare two checkouts by alternating them, not against a number from an
earlier day.  `--cgroup N` times the per-run cgroup work alone on a real box
cgroup (prepare, finish, the between-runs step), N iterations per round.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from typing import Any

import benchlib as bl

import sandboxd.sandbox.agentchan as agentchan
import sandboxd.sandbox.agentproto as proto
import sandboxd.sandbox.box as boxmod
import sandboxd.sandbox.cgroups as cgroups
from sandboxd.engine.engine import Engine
from sandboxd.schema import RunRequest

CMD = ["/bin/true"]
now = time.perf_counter_ns


class Hooks:
    """Timing wrappers around sandboxd internals, removed on exit."""

    def __init__(self) -> None:
        self.t: dict[str, list[int]] = defaultdict(list)
        self.undo: list[tuple[object, str, object]] = []
        self.missing: list[str] = []

    def patch(self, owner: object, name: str, make: Callable[[Any], Any]) -> None:
        orig = getattr(owner, name, None)
        if orig is None:
            self.missing.append(f"{getattr(owner, '__name__', owner)}.{name}")
            return
        self.undo.append((owner, name, orig))
        setattr(owner, name, make(orig))

    def timed(self, owner: object, name: str, key: str) -> None:
        t = self.t

        def make(orig: Any) -> Any:
            def w(*a: Any, **k: Any) -> Any:
                t0 = now()
                try:
                    return orig(*a, **k)
                finally:
                    t[key].append(now() - t0)

            return w

        self.patch(owner, name, make)

    def _hook_box(self, state: dict[int, list[Any]]) -> None:
        t = self.t

        def run_(orig: Any) -> Any:
            async def w(box: Any, *a: Any, **k: Any) -> Any:
                st = state[id(box.chan)]
                st[:] = ["run", 0, 0]
                t_enter = now()
                try:
                    return await orig(box, *a, **k)
                finally:
                    end = now()
                    if st[1] and st[2]:
                        t["py_before"].append(st[1] - t_enter)
                        t["rtt_run"].append(st[2] - st[1])
                        t["py_after"].append(end - st[2])
                    t["box_run"].append(end - t_enter)

            return w

        def reset_(orig: Any) -> Any:
            async def w(box: Any, *a: Any, **k: Any) -> Any:
                st = state[id(box.chan)]
                st[:] = ["reset", 0, 0]
                t0 = now()
                try:
                    return await orig(box, *a, **k)
                finally:
                    t["reset"].append(now() - t0)

            return w

        self.patch(boxmod.Box, "_run", run_)
        self.patch(boxmod.Box, "reset", reset_)

    def _hook_channel(self, state: dict[int, list[Any]]) -> None:
        def expect_(orig: Any) -> Any:
            def w(chan: Any) -> Any:
                fut = orig(chan)
                st = state[id(chan)]
                if st[0] == "run" and not st[1]:
                    st[1] = now()  # send() follows at once (a run that resets behind expects twice)
                return fut

            return w

        def readable_(orig: Any) -> Any:
            def w(chan: Any) -> Any:
                t0 = now()
                was = chan.waiters[0] if chan.waiters else None  # (the reply this packet answers)
                orig(chan)
                st = state[id(chan)]
                if st[0] == "run" and was is not None and was.done() and st[1] and not st[2]:
                    st[2] = t0
                return None

            return w

        self.patch(agentchan.Channel, "expect", expect_)
        self.patch(agentchan.Channel, "_readable", readable_)

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        # Per channel (= per box): [kind of the request in flight, sent at, reply at].
        # Runs and background resets of other boxes interleave on the loop.
        state: dict[int, list[Any]] = defaultdict(lambda: ["run", 0, 0])
        self._hook_box(state)
        self._hook_channel(state)
        self.timed(agentchan.Channel, "send", "send")
        for backend_cls in (cgroups.V1, cgroups.V2):
            self.timed(backend_cls, "prepare", "cg_prepare")
            self.timed(backend_cls, "finish", "cg_finish")
            self.timed(backend_cls, "between_runs", "cg_between_runs")
        self.timed(boxmod, "classify", "classify")
        self.timed(proto, "encode_run", "encode")
        try:
            yield
        finally:
            for owner, name, orig in reversed(self.undo):
                setattr(owner, name, orig)
            self.undo.clear()


def p50_us(xs: list[int]) -> float:
    return bl.percentile(sorted(xs), 50) / 1e3 if xs else float("nan")


async def measure(eng: Engine, mode: str, n: int, block: int, hooks: Hooks) -> dict[str, Any]:
    req = RunRequest(cmd=CMD)
    pool = eng.pools["host"]
    total: list[int] = []
    wall: list[int] = []
    bare: list[int] = []
    hooks.t.clear()
    cpu = 0.0
    done = 0
    while done < n:
        k = min(block, n - done)
        bl.timed(k, bare, bl.spawn_wait, CMD)  # interleaved: the reference sees the same background load
        box = await eng.box() if mode == "box.run" else None
        c0 = time.process_time()
        for r in await bl.timed_async(k, total, box.run if box is not None else eng.run, req):
            wall.append(int(r.wall_time * 1e9))
            if r.status != "ok":
                raise RuntimeError(f"{mode}: {r.status} {r.message}")
        if box is not None:
            eng.release(box)
        # The background resets of this block belong to its CPU figure.
        await bl.pool_warm(pool)
        cpu += time.process_time() - c0
        done += k
    t = hooks.t
    rtt = p50_us(t["rtt_run"])
    out: dict[str, Any] = {
        "mode": mode,
        "runs": n,
        "total_us": p50_us(total),
        "bare_us": p50_us(bare),
        "box_run_us": p50_us(t["box_run"]),
        "py_before_us": p50_us(t["py_before"]),
        "rtt_us": rtt,
        "agent_wall_us": p50_us(wall),
        "agent_ipc_us": rtt - p50_us(wall),
        "py_after_us": p50_us(t["py_after"]),
        "daemon_cpu_us_per_run": cpu / n * 1e6,
        "parts_us": {k: p50_us(t[k]) for k in ("cg_prepare", "encode", "send", "cg_finish", "classify") if t.get(k)},
        "background_us": {k: p50_us(t[k]) for k in ("reset", "cg_between_runs") if t.get(k)},
        "background_calls_per_run": {k: len(t[k]) / n for k in ("reset", "cg_between_runs") if t.get(k)},
    }
    out["engine_overhead_us"] = out["total_us"] - out["box_run_us"] if mode == "eng.run" else float("nan")
    return out


async def cpu_rounds(eng: Engine, n: int, rounds: int) -> list[float]:
    """µs of this process's CPU per Engine.run(), one figure per round."""
    req = RunRequest(cmd=CMD)
    pool = eng.pools["host"]
    out: list[float] = []
    for _ in range(rounds):
        await bl.pool_warm(pool)
        c0 = time.process_time()
        for _ in range(n):
            r = await eng.run(req)
            if r.status != "ok":
                raise RuntimeError(f"eng.run: {r.status} {r.message}")
        await bl.pool_warm(pool, step=0.0005)
        out.append((time.process_time() - c0) / n * 1e6)
    return out


def cgroup_rounds(box: boxmod.Box, n: int, rounds: int) -> list[float]:
    """µs of CPU per prepare + finish + between-runs step, one figure per round."""
    cg = box.cg
    out: list[float] = []
    for _ in range(rounds):
        c0 = time.process_time()
        for _ in range(n):
            rc = cg.prepare(256 << 20, 64)
            rc.close_fds()
            cg.finish(rc, True)
            if not cg.settled:
                cg.between_runs()
        out.append((time.process_time() - c0) / n * 1e6)
    return out


def report(o: bl.Out, m: dict[str, Any], res: list[dict[str, Any]], missing: list[str]) -> None:
    o.print(f"Machine: {bl.machine_line(m)}")
    o.print()
    o.print("`/bin/true`, sequential, medians in µs (parts are medians of their own, so they need not add up):")
    o.print()
    cols = [r["mode"] for r in res]
    rows: list[list[str]] = []

    def row(label: str, key: str, sub: str | None = None) -> None:
        vals = []
        for r in res:
            v = r[sub].get(key) if sub else r.get(key)
            vals.append("-" if v is None or v != v else f"{v:.0f}")
        rows.append([label, *vals])

    row("total per run (caller's view)", "total_us")
    row("  engine overhead (Engine.run - Box.run)", "engine_overhead_us")
    row("  Python before send", "py_before_us")
    row("    of it cgroup prepare", "cg_prepare", "parts_us")
    row("    of it encode", "encode", "parts_us")
    row("    of it sendmsg + fds", "send", "parts_us")
    row("  agent + IPC (round trip - in-box wall)", "agent_ipc_us")
    row("  in-box program (agent clone..reap)", "agent_wall_us")
    row("  Python after reply", "py_after_us")
    row("    of it cgroup finish", "cg_finish", "parts_us")
    row("    of it classify", "classify", "parts_us")
    row("bare posix_spawn+waitpid (interleaved)", "bare_us")
    row("background: reset round trip", "reset", "background_us")
    row("background: cgroup between_runs (on the event loop)", "cg_between_runs", "background_us")
    row("daemon CPU per run (process time)", "daemon_cpu_us_per_run")
    o.print(bl.markdown_table(["µs", *cols], rows))
    if missing:
        o.print()
        o.print(f"Hooks not installed (sandboxd internals moved): {', '.join(missing)}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="few runs (CI smoke test)")
    p.add_argument("--json", action="store_true", help="print one JSON line on stdout (human text on stderr)")
    p.add_argument("--runs", type=int, default=1000, help="runs per mode (default 1000)")
    p.add_argument("--block", type=int, default=100, help="runs between bare reference blocks (default 100)")
    p.add_argument("--pool-size", type=int, default=4)
    p.add_argument("--instance", default="bench-breakdown", help="sandboxd instance name")
    p.add_argument("--cpu", type=int, metavar="ROUNDS", default=0, help="only the daemon CPU per run, no hooks")
    p.add_argument("--cgroup", type=int, metavar="N", default=0, help="only the per-run cgroup work, N per round")
    a = p.parse_args(argv)
    if a.quick:
        a.runs, a.block = 40, 20
    return a


async def cpu_main(a: argparse.Namespace, o: bl.Out, m: dict[str, Any]) -> int:
    eng = await bl.start_engine(o, a.instance, a.pool_size)
    if eng is None:
        return 2
    try:
        for _ in range(50):  # warm-up
            await eng.run(RunRequest(cmd=CMD))
        if a.cgroup:
            box = await eng.box()
            try:
                per_round = cgroup_rounds(box, a.cgroup, a.cpu or 5)
            finally:
                eng.release(box)
        else:
            per_round = await cpu_rounds(eng, a.runs, a.cpu)
    finally:
        await eng.close()
    med = bl.percentile(sorted(per_round), 50)
    o.print(f"Machine: {bl.machine_line(m)}")
    what = f"cgroup work per run, {a.cgroup} iterations" if a.cgroup else f"Engine.run(/bin/true), {a.runs} runs"
    o.print(f"daemon CPU per {what} x {len(per_round)} rounds, µs: median {med:.1f}")
    o.print("  rounds: " + " ".join(f"{x:.1f}" for x in per_round))
    res = {"bench": "breakdown-cpu", "machine": m, "runs": a.runs, "rounds": per_round, "median_us": med}
    o.json(bl.clean_floats(res, 1))
    return 0


async def amain(a: argparse.Namespace) -> int:
    o, m = bl.begin(a.json)
    if a.cpu or a.cgroup:
        return await cpu_main(a, o, m)
    res: list[dict[str, Any]] = []
    hooks = Hooks()
    # Installed before the engine starts: a channel binds its reader callback
    # when its box is built.
    with hooks.installed():
        eng = await bl.start_engine(o, a.instance, a.pool_size)
        if eng is None:
            return 2
        try:
            for _ in range(20):  # warm-up: caches, the agent's first pages
                await eng.run(RunRequest(cmd=CMD))
            for mode in ("box.run", "eng.run"):
                res.append(await measure(eng, mode, a.runs, a.block, hooks))
        finally:
            await eng.close()
    report(o, m, res, hooks.missing)
    o.json(bl.clean_floats({"bench": "breakdown", "machine": m, "quick": a.quick, "results": res}, 1))
    return 0


def main(argv: list[str] | None = None) -> int:
    return bl.run_main(amain(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
