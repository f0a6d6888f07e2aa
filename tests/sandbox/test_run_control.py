"""RunControl: signals into a run from outside its await (live sessions), and
a caller's stderr fd.  Real boxes (the session's engine)."""

from __future__ import annotations

import asyncio
import os
import signal

from box_fixtures import SyncEngine

from sandboxd.sandbox.box import RunControl
from sandboxd.schema import Limits, RunRequest, RunResult

# Traps TERM in the program and in a child of its own process group/session:
# a signal must reach every process of the run, not only the first.
PROGRAM = r"""
import os, signal, sys, time
if os.fork() == 0:
    os.setsid()
    signal.signal(signal.SIGTERM, lambda *a: (os.write(2, b"child TERM\n"), os._exit(0)))
    time.sleep(30)
    os._exit(1)
signal.signal(signal.SIGTERM, lambda *a: (os.write(1, b"parent TERM\n"), os.wait(), sys.exit(5)))
os.write(1, b"up\n")
time.sleep(30)
"""


def _run(engine: SyncEngine, src: str, signals: list[int]) -> tuple[RunResult, bytes, bytes]:
    async def go() -> tuple[RunResult, bytes, bytes]:
        ctl = RunControl()
        in_r, in_w = os.pipe2(os.O_CLOEXEC)
        out_r, out_w = os.pipe2(os.O_CLOEXEC)
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        req = RunRequest(cmd=["python3", "-c", src], limits=Limits(wall_time=20))
        run = asyncio.ensure_future(engine.engine.run(req, stdio=(in_r, out_w, err_w), control=ctl))
        loop = asyncio.get_running_loop()
        first = await loop.run_in_executor(None, os.read, out_r, 3)  # "up\n": handlers are set
        assert first == b"up\n"
        await asyncio.sleep(0.2)  # (the child has set its handler too)
        for s in signals:
            ctl.signal(s)
        res = await run
        os.close(in_w)
        out = first + await loop.run_in_executor(None, os.read, out_r, 1000)
        err = await loop.run_in_executor(None, os.read, err_r, 1000)
        for fd in (out_r, err_r):
            os.close(fd)
        return res, out, err

    return engine.call(go())


def test_signal_reaches_every_process_of_the_run(engine: SyncEngine) -> None:
    res, out, err = _run(engine, PROGRAM, [signal.SIGTERM])
    assert (res.status, res.exit_code) == ("nonzero_exit", 5)
    assert out == b"up\nparent TERM\n"
    assert err == b"child TERM\n"  # in its own session, still reached; and stderr went to the caller's fd
    assert res.stderr == b""


def test_agent_takes_only_terminal_signals(engine: SyncEngine) -> None:
    # SIGSTOP would freeze the run past any idle check; the agent drops it, so
    # the TERM after it ends the run at once (a stopped process would only
    # see TERM when continued: the run would reach its wall limit).
    res, out, _ = _run(engine, PROGRAM, [signal.SIGSTOP, signal.SIGTERM])
    assert (res.status, res.exit_code) == ("nonzero_exit", 5)  # not time_limit
    assert out == b"up\nparent TERM\n"


def test_a_signal_outside_a_run_is_dropped(engine: SyncEngine) -> None:
    ctl = RunControl()
    ctl.signal(signal.SIGTERM)  # not attached: nothing to send to
    assert engine.run(["true"]).status == "ok"
