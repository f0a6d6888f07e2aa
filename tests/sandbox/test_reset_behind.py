"""A lone run's reset starts in the agent right behind its RESULT (RUN flag
F_RESET_BEHIND): the daemon sends no RESET, the pool's reset() awaits the
READY that reset sends (issue 18).  The box must still be reset before the
next job gets it, and files_out must still be read before anything is
emptied."""

from __future__ import annotations

import asyncio
import os
import time

from box_fixtures import SyncEngine

from sandboxd.schema import RunRequest

_DIRTY = "echo x > /box/a; echo y > /tmp/b; sleep 100 & exit 0"
_CLEAN = RunRequest(cmd=["sh", "-c", "find /box /tmp -mindepth 1 | wc -l; pgrep -c sleep; exit 0"])


def _box_entries(boxfd: int, until_empty: float) -> list[str]:
    """/box as the daemon sees it through the box's fd, waited on (a bounded
    wait, not a timing claim) until it is empty or `until_empty` s passed."""
    stop = time.monotonic() + until_empty
    while True:
        names = os.listdir(f"/proc/self/fd/{boxfd}")
        if not names or time.monotonic() > stop:
            return names
        time.sleep(0.01)


def test_the_agent_resets_after_the_result_with_no_reset_message(engine: SyncEngine) -> None:
    box = engine.call(engine.engine.box())
    try:
        r = engine.call(box.run(RunRequest(cmd=["sh", "-c", _DIRTY]), reset_behind=True))
        assert r.status == "ok", r
        # Nothing asked for a reset yet, and the job's file is gone all the same.
        assert _box_entries(box.boxfd, 10.0) == []
        assert box._behind is not None
    finally:
        engine.engine.release(box)
    engine.call(asyncio.sleep(0.05))
    for _ in range(2):  # whichever box the probe lands on
        p = engine.run(req=_CLEAN)
        assert (p.status, p.stdout.split()) == ("ok", [b"0", b"0"]), p


def test_a_box_run_again_before_release_is_reset_first(engine: SyncEngine) -> None:
    box = engine.call(engine.engine.box())
    try:
        engine.call(box.run(RunRequest(cmd=["sh", "-c", _DIRTY]), reset_behind=True))
        p = engine.call(box.run(_CLEAN))
        assert (p.status, p.stdout.split()) == ("ok", [b"0", b"0"]), p
        assert box._behind is None
    finally:
        engine.engine.release(box)


def test_a_lone_run_that_used_the_network_gets_a_new_namespace(engine: SyncEngine) -> None:
    ns = RunRequest(cmd=["readlink", "/proc/self/ns/net"])
    box = engine.call(engine.engine.box())
    try:
        before = engine.call(box.run(ns)).stdout
        tcp = "import socket\nl = socket.socket(); l.bind(('127.0.0.1', 0)); l.listen()\n"
        tcp += "socket.create_connection(l.getsockname())"
        r = engine.call(box.run(RunRequest(cmd=["python3", "-S", "-c", tcp]), reset_behind=True))
        assert r.status == "ok", r
        # The reset behind hands over to a new worker, whose READY answers reset().
        engine.call(box.reset())
        after = engine.call(box.run(ns)).stdout
        assert before != after and box.alive
    finally:
        engine.engine.release(box)


def test_files_out_of_a_lone_run_are_read_before_its_reset(engine: SyncEngine) -> None:
    for _ in range(3):
        r = engine.run(req=RunRequest(cmd=["sh", "-c", "echo out > /box/o"], files_out=["o"]))
        assert (r.status, [(f.path, f.content) for f in r.files]) == ("ok", [("o", b"out\n")]), r
