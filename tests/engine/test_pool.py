"""The pool and the engine survive crashes: agents killed, the daemon killed."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from box_fixtures import SyncEngine
from instances import inst

from sandboxd.engine.engine import Engine, EngineConfig
from sandboxd.sandbox import cgroups
from sandboxd.schema import Limits, RunRequest


def test_agent_killed_mid_run_costs_one_run(engine: SyncEngine) -> None:
    eng = engine.engine
    pool = eng.pools["host"]
    crashes = pool.stats.agent_crashes

    async def scenario() -> str:
        box = await eng.box()
        assert box.proc is not None
        task = asyncio.ensure_future(box.run(RunRequest(cmd=["sleep", "5"], limits=Limits(wall_time=10))))
        await asyncio.sleep(0.2)
        os.kill(box.proc.pid, signal.SIGKILL)
        res = await asyncio.wait_for(task, 5)
        eng.release(box)
        return res.status

    assert engine.call(scenario()) == "internal_error"
    for _ in range(4):
        assert engine.run(["true"]).status == "ok"
    assert pool.stats.agent_crashes == crashes + 1


def test_dead_idle_agent_is_retried_transparently(engine: SyncEngine) -> None:
    pool = engine.engine.pools["host"]
    for _ in range(2):
        engine.run(["true"])  # let both boxes come back warm
    engine.call(asyncio.sleep(0.05))
    first = pool._idle._queue[0]  # type: ignore[attr-defined]  # the box the next run gets
    assert first.proc is not None
    os.kill(first.proc.pid, signal.SIGKILL)
    first.proc.wait()
    for _ in range(4):
        r = engine.run(["true"])
        assert r.status == "ok", r


def test_box_recycled_after_max_runs() -> None:
    eng = SyncEngine(EngineConfig(instance=inst("-recycle"), pool_size=1, max_runs_per_box=3))
    try:
        pool = eng.engine.pools["host"]
        for _ in range(7):
            assert eng.run(["true"]).status == "ok"
        eng.call(asyncio.sleep(0.1))  # the last recycle runs in the background
        assert pool.stats.recycled >= 2
        assert pool.stats.built >= 3
    finally:
        eng.close()


CRASHER = textwrap.dedent(
    """
    import sys, time, uvloop
    from sandboxd.engine.engine import Engine, EngineConfig
    from sandboxd.schema import RunRequest
    async def main():
        eng = await Engine.start(EngineConfig(instance=sys.argv[1], pool_size=2))
        r = await eng.run(RunRequest(cmd=["sleep", "0"]))
        print(r.status, flush=True)
        time.sleep(60)
    uvloop.run(main())
    """
)


def _instance_dirs(instance: str) -> list[Path]:
    be = cgroups.detect("pytest-probe", create=False)
    roots = list(be.base.values()) if isinstance(be, cgroups.V1) else [be.root]
    return [r.parent / instance for r in roots if (r.parent / instance).exists()]


def _crash_an_instance(instance: str) -> None:
    proc = subprocess.Popen([sys.executable, "-c", CRASHER, instance], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ok"
        assert _instance_dirs(instance), "the instance should have cgroups while it runs"
    finally:
        proc.kill()
        proc.wait()


def test_restart_sweeps_what_a_killed_instance_left() -> None:
    _crash_an_instance(inst("-crash"))
    # The agents die with their parent (PDEATHSIG); the cgroup dirs stay.
    assert _instance_dirs(inst("-crash"))
    eng = SyncEngine(EngineConfig(instance=inst("-crash"), pool_size=1))
    try:
        assert eng.run(["true"]).status == "ok"
    finally:
        eng.close()
    assert not _instance_dirs(inst("-crash"))


def test_any_start_sweeps_dead_instances_but_not_live_ones(engine: SyncEngine) -> None:
    _crash_an_instance(inst("-dead"))
    assert _instance_dirs(inst("-dead"))
    eng = SyncEngine(EngineConfig(instance=inst("-other"), pool_size=1))
    try:
        assert not _instance_dirs(inst("-dead"))
        assert _instance_dirs(inst()), "the live session engine must be left alone"
        assert engine.run(["true"]).status == "ok"
    finally:
        eng.close()


def test_second_engine_with_same_instance_is_refused(engine: SyncEngine) -> None:
    loop = asyncio.new_event_loop()
    try:
        try:
            loop.run_until_complete(Engine.start(EngineConfig(instance=inst(), pool_size=1)))
        except RuntimeError as e:
            assert "already running" in str(e)
        else:
            raise AssertionError("a second engine on the same instance must be refused")
    finally:
        loop.close()
    assert engine.run(["true"]).status == "ok"


def test_concurrent_runs_use_every_box(engine: SyncEngine) -> None:
    # Each run prints when it started and ended (the box's clock is the host's).
    req = RunRequest(cmd=["sh", "-c", "date +%s.%N; sleep 1; date +%s.%N"])
    results = engine.gather(*(engine.engine.run(req) for _ in range(2)))
    assert [r.status for r in results] == ["ok"] * 2
    (a0, a1), (b0, b1) = (map(float, r.stdout.split()) for r in results)
    assert a0 < b1 and b0 < a1, "two warm boxes: the runs overlap in time"
