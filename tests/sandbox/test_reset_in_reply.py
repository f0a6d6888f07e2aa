"""A pooled run's reset rides on the run's reply (RUN flag F_RESET_AFTER):
the box is back in the pool when Engine.run returns, with no RESET round
trip, and it is exactly as clean as after reset()."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from box_fixtures import SyncEngine
from instances import inst

from sandboxd.engine.engine import EngineConfig
from sandboxd.engine.pool import Pool
from sandboxd.sandbox.box import Box
from sandboxd.schema import FileIn, Limits, RunRequest, RunResult


@pytest.fixture(scope="module")
def one() -> Iterator[SyncEngine]:
    """A pool of one box: every run lands on the box the run before it used."""
    eng = SyncEngine(EngineConfig(instance=inst("-fold"), pool_size=1))
    yield eng
    eng.close()


def _run_and_look(engine: SyncEngine, req: RunRequest) -> tuple[RunResult, int, int]:
    """(result, idle boxes, background tasks) right as Engine.run returns,
    before the event loop ran anything else."""
    pool = engine.engine.pools["host"]

    async def scenario() -> tuple[RunResult, int, int]:
        r = await engine.engine.run(req)
        return r, pool.stats.warm, len(pool._tasks)

    return engine.call(scenario())


def _the_box(pool: Pool) -> Box:
    box: Box = pool._idle._queue[0]  # type: ignore[attr-defined]
    return box


_DIRTY = "echo x > /box/a; echo y > /tmp/b; echo z > /dev/shm/c; mkdir /box/d; sleep 100 & exit 0"
_CLEAN = RunRequest(cmd=["sh", "-c", "find /box /tmp /dev/shm -mindepth 1 | wc -l; pgrep -c sleep; echo $$"])


def test_a_pooled_run_comes_back_reset_with_no_round_trip(one: SyncEngine) -> None:
    pool = one.engine.pools["host"]
    recycled = pool.stats.recycled
    r, warm, tasks = _run_and_look(one, RunRequest(cmd=["sh", "-c", _DIRTY]))
    assert r.status == "ok", r
    # The old path left the box to a background reset task: 0 warm, 1 task.
    assert (warm, tasks) == (1, 0)
    p, _, _ = _run_and_look(one, _CLEAN)
    # Nothing of the run survives: files, processes, and the pid counter
    # starts where it always does.
    first = _run_and_look(one, RunRequest(cmd=["sh", "-c", "echo $$"]))[0]
    assert (p.status, p.stdout.split()[:2]) == ("ok", [b"0", b"0"]), p
    assert p.stdout.split()[2] == first.stdout.strip()
    assert pool.stats.recycled == recycled


def test_a_new_box_tmpfs_from_the_folded_reset_reaches_the_daemon(one: SyncEngine) -> None:
    # Past 64 KiB of xattr names /box cannot be emptied in place: the reset
    # mounts a fresh tmpfs, and its fd comes back with the run's result.
    pool = one.engine.pools["host"]
    one.run(["true"])
    dev = os.fstat(_the_box(pool).boxfd).st_dev
    plant = "import os\nfor i in range(12000): os.setxattr('/box', 'user.%0100d' % i, b'')\n"
    lim = Limits(cpu_time=10, wall_time=20)
    r, warm, _ = _run_and_look(one, RunRequest(cmd=["python3", "-S", "-c", plant], limits=lim))
    assert (r.status, warm) == ("ok", 1), r
    assert os.fstat(_the_box(pool).boxfd).st_dev != dev
    # files_in go through the new fd: the probe is there, nothing else is.
    probe = "find /box -mindepth 1 | wc -l; python3 -S -c \"import os; print(os.listxattr('/box'))\""
    p = one.run(["sh", "/box/probe.sh"], files_in=[FileIn("probe.sh", probe.encode())])
    assert (p.status, p.stdout) == ("ok", b"1\n[]\n"), p


def test_a_run_that_used_the_network_gets_a_new_namespace(one: SyncEngine) -> None:
    ns = RunRequest(cmd=["readlink", "/proc/self/ns/net"])
    before = one.run(req=ns).stdout
    tcp = "import socket\nl = socket.socket(); l.bind(('127.0.0.1', 0)); l.listen()\n"
    tcp += "socket.create_connection(l.getsockname())"
    r, warm, tasks = _run_and_look(one, RunRequest(cmd=["python3", "-S", "-c", tcp]))
    # The agent declines the folded reset: the pool's RESET hands the box
    # over to a new worker in a new network namespace.
    assert (r.status, warm, tasks) == ("ok", 0, 1), r
    after = one.run(req=ns).stdout
    assert before != after
    assert one.run(req=ns).stdout == after  # a quiet run keeps it


def test_files_out_are_read_before_the_box_is_reset(one: SyncEngine) -> None:
    req = RunRequest(cmd=["sh", "-c", "echo out > /box/o"], files_out=["o"])
    r, warm, tasks = _run_and_look(one, req)
    assert (r.status, [(f.path, f.content) for f in r.files]) == ("ok", [("o", b"out\n")]), r
    assert (warm, tasks) == (0, 1)  # reset by the pool afterwards, as before
    p = one.run(["sh", "-c", "find /box -mindepth 1 | wc -l"])
    assert p.stdout == b"0\n", p
