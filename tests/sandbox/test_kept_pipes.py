"""A box keeps its stdout and stderr pipes from run to run (sandboxd.sandbox.agentchan.KeptPipes,
issue 18): nothing one run wrote reaches the next run's result, whatever the
first left behind (output past its limit, a writer in the background, a
cancelled run), and the pipes are new after a run that may have left output."""

from __future__ import annotations

import asyncio
import os

import pytest
from box_fixtures import SyncEngine, limits

from sandboxd.sandbox import box as box_module
from sandboxd.sandbox.box import Box
from sandboxd.schema import RunRequest, RunResult

_PROBE = RunRequest(cmd=["sh", "-c", "printf out; printf err >&2"])


def _pipes(box: Box) -> tuple[int, ...] | None:
    """The box's kept pipes by inode (an fd number may be reused by new ones)."""
    return None if box.pipes.fds is None else tuple(os.fstat(fd).st_ino for fd in box.pipes.fds)


def _on_one_box(engine: SyncEngine, *reqs: RunRequest) -> tuple[list[RunResult], list[object]]:
    """Runs one after the other on the same box (reset between, as the pool does);
    each run's result and the box's pipe fds after it."""
    box: Box = engine.call(engine.engine.box())
    results, fds = [], []
    try:
        for req in reqs:
            results.append(engine.call(box.run(req)))
            fds.append(_pipes(box))
            engine.call(box.reset())
    finally:
        engine.engine.release(box)
    return results, fds


def _probe_is_clean(r: RunResult) -> None:
    assert (r.status, r.stdout, r.stderr) == ("ok", b"out", b"err"), r


def test_the_same_pipes_serve_every_run_and_each_result_is_its_own(engine: SyncEngine) -> None:
    first = RunRequest(cmd=["sh", "-c", "printf first; printf first-err >&2"])
    (a, b, c), fds = _on_one_box(engine, first, _PROBE, _PROBE)
    assert (a.stdout, a.stderr) == (b"first", b"first-err"), a
    _probe_is_clean(b)
    _probe_is_clean(c)
    assert fds[0] is not None and fds[0] == fds[1] == fds[2]  # (no new pipes: the point of keeping them)


def test_output_past_its_limit_is_not_left_for_the_next_run(
    engine: SyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 200 kB each to stdout and stderr, 1 KiB allowed, written at once (the
    # pipes hold 256 KiB) and, with no watching before the result, all still
    # in them when it comes: read out to their end and dropped then, not left
    # for the next run.
    monkeypatch.setattr(box_module, "WATCH_AFTER", 60.0)
    flood = RunRequest(
        cmd=["sh", "-c", "head -c 200000 /dev/zero; head -c 200000 /dev/zero >&2"],
        limits=limits(output=1024),
    )
    (big, probe), fds = _on_one_box(engine, flood, _PROBE)
    assert big.status == "output_limit" and len(big.stdout) <= 1024 and len(big.stderr) <= 1024, big
    _probe_is_clean(probe)
    assert fds[0] == fds[1]


def test_a_background_writer_is_gone_before_the_next_run(engine: SyncEngine) -> None:
    # The shell exits at once; its child writes on until the agent kills every
    # process of the run, before the result: the probe sees none of it.
    bg = RunRequest(cmd=["sh", "-c", "(while :; do echo spam; echo spam >&2; done) & sleep 0.2; exit 0"])
    (first, probe), _ = _on_one_box(engine, bg, _PROBE)
    assert first.status == "ok" and first.stdout.startswith(b"spam"), first
    _probe_is_clean(probe)


def test_a_cancelled_run_spoils_the_pipes_and_the_next_run_gets_new_ones(engine: SyncEngine) -> None:
    box: Box = engine.call(engine.engine.box())
    try:
        engine.call(box.run(_PROBE))
        before = _pipes(box)
        assert before is not None

        async def cancelled() -> None:
            t = asyncio.ensure_future(box.run(RunRequest(cmd=["sh", "-c", "echo early; echo early >&2; sleep 30"])))
            await asyncio.sleep(0.5)
            t.cancel()
            with pytest.raises(asyncio.CancelledError):
                await t

        engine.call(cancelled())
        assert box.pipes.fds is None  # (its output was not read to the end: closed)
        engine.call(box.reset())
        _probe_is_clean(engine.call(box.run(_PROBE)))
        after = _pipes(box)
        assert after is not None and not set(after) & set(before)
    finally:
        engine.engine.release(box)
