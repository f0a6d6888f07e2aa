"""Where a socket round trip's time goes, stage by stage (issue 18).

Starts a daemon of `tree` whose command line runs under this script's
`--daemon` mode: it wraps seven of the daemon's own functions (below, MARKS)
to note a monotonic timestamp as each is entered or returns, then runs
`sandboxd serve` unchanged.  The parent makes `--n` socket round trips of
`/bin/true` (one client, keyed, as ab_roundtrip.py), stops the daemon, reads
its marks and prints each stage's p50 / p90 / p99 in µs, next to bare
posix_spawn + waitpid and the run's own in-box wall_time in the same run.
Nothing of the daemon's code is changed; each mark costs ~0.5 µs, which the
stages carry (the `frame -> decoded` stage, the first, also carries the
unmarked read of the frame).

    PYTHONPATH=$PWD:$PWD/clients/python .venv/bin/python benchmarks/timeline.py . [--n 3000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import atexit
import functools
import inspect
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

# (module, attribute path, mark on entry, mark on return): the stages' edges.
MARKS: list[tuple[str, str, str | None, str | None]] = [
    ("sandboxd.api.unixserver", "_Conn.handle", "frame", None),  # a whole request frame read
    ("sandboxd.api.wire", "decode_body", None, "decoded"),  # its body a RunRequest
    ("sandboxd.jobs.service", "Service._start_run", None, "accepted"),  # tenant, admission, key, job record
    ("sandboxd.engine.engine", "Engine._run_checked", "engine", "result"),  # the job's task at the engine
    ("sandboxd.sandbox.agentchan", "Channel.send", "to_agent", None),  # the RUN message sent
    ("sandboxd.sandbox.agentchan", "Channel._readable", "from_agent", None),  # the agent's RESULT in
    ("sandboxd.api.unixserver", "_Conn.send", "reply", None),  # the result frame handed to the socket
]
STAGES = [
    ("reply", "frame", "the client and the kernel: reply out -> next request's frame read"),
    ("frame", "decoded", "request frame -> RunRequest"),
    ("decoded", "accepted", "the job accepted: tenant, admission, idempotency key, record"),
    ("accepted", "engine", "the job's task reaches the engine"),
    ("engine", "to_agent", "queues, a box, its cgroups, pipes, the RUN message"),
    ("to_agent", "from_agent", "the agent and the run (in the box)"),
    ("from_agent", "result", "outputs, cgroup figures, the RunResult"),
    ("result", "reply", "the job finished, its waiter woken, the reply encoded"),
]


def _daemon(out: str, argv: list[str]) -> int:
    """The daemon's process: marks installed, then sandboxd's own command line."""
    import importlib

    marks: list[tuple[str, int]] = []
    clock = time.perf_counter_ns

    def wrap(fn: Callable[..., Any], enter: str | None, leave: str | None) -> Callable[..., Any]:
        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def marked_async(*a: Any, **k: Any) -> Any:
                if enter:
                    marks.append((enter, clock()))
                try:
                    return await fn(*a, **k)
                finally:
                    if leave:
                        marks.append((leave, clock()))

            return marked_async

        @functools.wraps(fn)
        def marked(*a: Any, **k: Any) -> Any:
            if enter:
                marks.append((enter, clock()))
            try:
                return fn(*a, **k)
            finally:
                if leave:
                    marks.append((leave, clock()))

        return marked

    for mod, path, enter, leave in MARKS:
        owner: Any = importlib.import_module(mod)
        *outer, name = path.split(".")
        for part in outer:
            owner = getattr(owner, part)
        setattr(owner, name, wrap(getattr(owner, name), enter, leave))

    def dump() -> None:
        with open(out, "w") as f:
            f.writelines(f"{tag} {ns}\n" for tag, ns in marks)

    atexit.register(dump)
    from sandboxd.app.cli import main

    return main(argv)


def runs_of(path: str) -> list[dict[str, int]]:
    """Per request: each edge's first timestamp after its frame (and `reply` of the one before)."""
    runs: list[dict[str, int]] = []
    cur: dict[str, int] | None = None
    last_reply = 0
    for line in Path(path).read_text().splitlines():
        tag, ns = line.split()
        t = int(ns)
        if tag == "frame":
            if cur is not None:
                runs.append(cur)
            cur = {"frame": t, "prev_reply": last_reply}
        elif cur is not None and tag not in cur:
            cur[tag] = t
        if tag == "reply":
            last_reply = t
    if cur is not None:
        runs.append(cur)
    return runs


def _tail(runs: list[dict[str, int]]) -> None:
    """Which stages make the slowest 1% of requests (frame -> reply) slow:
    each stage's mean in those requests, against its median over all."""
    total = sorted(runs, key=lambda r: r["reply"] - r["frame"])
    slow = total[int(0.99 * len(total)) :]
    edge = (slow[0]["reply"] - slow[0]["frame"]) / 1e3
    print(f"\nthe slowest 1% ({len(slow)} requests, frame -> reply from {edge:.0f} µs):")
    print("| stage | median, all µs | mean, slowest 1% | excess |")
    print("|---|---|---|---|")
    for a_, b_, what in STAGES[1:]:
        med = statistics.median((r[b_] - r[a_]) / 1e3 for r in runs)
        mean = statistics.fmean((r[b_] - r[a_]) / 1e3 for r in slow)
        print(f"| {what} | {med:.1f} | {mean:.1f} | {mean - med:+.1f} |")
    walled = [r for r in slow if "wall" in r]
    if walled:
        med = statistics.median(r["wall"] / 1e3 for r in runs if "wall" in r)
        mean = statistics.fmean(r["wall"] / 1e3 for r in walled)
        what = "of the agent's stage, the run's own wall_time in the box"
        print(f"| {what} | {med:.1f} | {mean:.1f} | {mean - med:+.1f} |")


def pct(xs: list[float], q: float) -> float:
    return sorted(xs)[min(len(xs) - 1, int(q * len(xs)))]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("tree", type=Path)
    ap.add_argument("--n", type=int, default=3000, help="round trips per round")
    ap.add_argument("--rounds", type=int, default=3, help="rounds, each with its bare posix_spawn")
    ap.add_argument("--pool", type=int, help="boxes (default: the daemon's own)")
    a = ap.parse_args()

    import uvloop
    from ab_roundtrip import start
    from daemon import bare_true, round_trip

    fd, out = tempfile.mkstemp(prefix="sandboxd-timeline-", suffix=".txt")
    os.close(fd)
    prefix = [sys.executable, str(Path(__file__).resolve()), "--daemon", out]
    proc, sock, _ = start(a.tree.resolve(), "timeline", a.pool, prefix)
    lat: list[int] = []
    bare: list[int] = []
    walls: list[float] = []
    try:
        for _ in range(a.rounds):
            bare += bare_true(max(300, a.n // 3))
            lat += uvloop.run(round_trip(sock, a.n, walls))
    finally:
        proc.terminate()
        proc.wait(60)
    runs = runs_of(out)
    if len(runs) == a.rounds * (a.n + 20):  # each round: 20 warm-ups (no wall_time kept), then n
        for i, w in enumerate(walls):
            runs[(i // a.n) * (a.n + 20) + 20 + i % a.n]["wall"] = int(w * 1e6)
    runs = [r for r in runs if all(k in r for k in ("engine", "to_agent", "from_agent", "result", "reply"))]
    runs = [r for r in runs if r["frame"] < r["to_agent"] < r["from_agent"] < r["result"] < r["reply"]]
    print(f"load average {os.getloadavg()[0]:.2f}; {a.rounds} rounds x {a.n} socket round trips of /bin/true")
    print(f"{len(runs)} requests with every mark in order (the 20 warm-up ones per round included)\n")
    print("| stage | p50 µs | p90 | p99 |")
    print("|---|---|---|---|")
    for a_, b_, what in STAGES:
        start_key = "prev_reply" if a_ == "reply" else a_
        xs = [(r[b_] - r[start_key]) / 1e3 for r in runs if r.get(start_key)]
        print(f"| {what} | {statistics.median(xs):.1f} | {pct(xs, 0.9):.1f} | {pct(xs, 0.99):.1f} |")
    _tail(runs)
    # the daemon's share of the critical path
    daemon = statistics.median((r["to_agent"] - r["frame"] + r["reply"] - r["from_agent"]) / 1e3 for r in runs)
    print(f"\ndaemon on the critical path (frame -> to_agent, from_agent -> reply): p50 {daemon:.1f} µs")
    print(f"the run's own wall_time in the box: p50 {statistics.median(walls) * 1e3:.1f} µs")
    b50, l50 = statistics.median(bare) / 1e3, statistics.median(lat) / 1e3
    print(f"round trip at the client p50 {l50:.1f} µs; bare posix_spawn + waitpid p50 {b50:.1f} µs: x{l50 / b50:.2f}")
    os.unlink(out)


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--daemon":
        raise SystemExit(_daemon(sys.argv[2], sys.argv[3:]))
    main()
