"""The Python client's retries against a real host daemon that stops and
comes back (SIGTERM, then a restart on the same socket and port): a call
made meanwhile completes, with one job.  (Through a fleet, a Redis restart
between the write and the reply: tests/fleet/test_fleet_keys.py.)"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from daemon_util import Daemon, Restartable
from instances import inst
from sandboxd_client import AsyncClient, Client, RunRequest, SandboxdError
from sandboxd_client.client import _Lost
from sandboxd_client.retry import Retry


@pytest.fixture(scope="module")
def daemon() -> Iterator[Restartable]:
    d = Restartable(inst("-client-retry"), pool_size=1, env={"SANDBOXD_DRAIN_TIMEOUT": "1"})
    yield d
    d.stop()


def _address(d: Daemon, transport: str) -> str:
    return d.http if transport == "http" else f"unix://{d.sock}"


@pytest.mark.parametrize("transport", ["http", "unix"])
def test_a_call_spanning_a_daemon_restart_completes_once(daemon: Restartable, transport: str) -> None:
    with Client(_address(daemon, transport)) as c:
        assert c.run(RunRequest(cmd=["/bin/true"])).status == "ok"  # connected before the restart
        assert daemon.stop() == 0
        out: list[Any] = []

        def call() -> None:
            try:
                out.append(c.run(RunRequest(cmd=["/bin/echo", "again"])))
            except Exception as e:
                out.append(e)

        t = threading.Thread(target=call)
        t.start()
        time.sleep(1.5)  # refused / no socket, retried
        assert not out, out
        daemon.restart()
        t.join(60)
    assert len(out) == 1 and not isinstance(out[0], Exception), out
    assert out[0].status == "ok" and out[0].stdout == b"again\n"
    assert daemon.runs() == 1  # the restarted daemon ran it once


def test_retries_are_bounded_by_the_deadline(daemon: Restartable) -> None:
    with Client(daemon.http, retry=Retry(deadline=1.0)) as c:
        assert daemon.stop() == 0
        try:
            with pytest.raises(OSError):  # refused, after retrying for about a second
                c.run(RunRequest(cmd=["/bin/true"]))
        finally:
            daemon.restart()


@pytest.mark.parametrize("transport", ["http", "unix"])
def test_a_waited_call_spanning_a_kill_9_completes_with_one_job(daemon: Restartable, transport: str) -> None:
    """kill -9 while the call's job runs: a waited call is acknowledged only by
    its result, so the restarted daemon (same job store) has nothing of it to
    run again, and the client's retry, with the same key, runs it there once.
    (An acknowledged job's rerun: tests/jobs/test_waited_daemon.py.)"""
    with Client(_address(daemon, transport)) as c:
        assert c.run(RunRequest(cmd=["/bin/true"])).status == "ok"
        out: list[Any] = []

        def call() -> None:
            try:
                out.append(c.run(RunRequest(cmd=["/bin/sh", "-c", "sleep 1; echo ran"])))
            except Exception as e:
                out.append(e)

        t = threading.Thread(target=call)
        t.start()
        deadline = time.monotonic() + 30
        while c.status()["pools"]["host"]["busy"] == 0:  # the job is running
            assert time.monotonic() < deadline
            time.sleep(0.05)
        reruns = daemon.output().count("unfinished jobs run again")
        daemon.proc.kill()
        daemon.proc.wait()
        daemon.log.close()
        daemon.restart()
        t.join(60)
    assert len(out) == 1 and not isinstance(out[0], Exception), out
    assert out[0].stdout == b"ran\n"
    assert daemon.output().count("unfinished jobs run again") == reruns  # (no row of it was left)
    assert daemon.runs() == 1  # the retry's job only


class _Script:
    """A transport that plays a script of outcomes, one per attempt (the
    deadline's arithmetic, which no daemon restart can time: see below)."""

    def __init__(self, *steps: Any) -> None:
        self.steps = list(steps)
        self.attempts = 0

    async def call(self, *args: Any) -> Any:
        self.attempts += 1
        step = self.steps.pop(0) if len(self.steps) > 1 else self.steps[0]
        if isinstance(step, float):  # a waited call that runs this long, then loses its connection
            await asyncio.sleep(step)
            raise _Lost("connection to sandboxd lost")
        if isinstance(step, BaseException):
            raise step
        return step


def _play(script: _Script, deadline: float) -> Any:
    async def go() -> Any:
        c = AsyncClient("http://127.0.0.1:9", retry=Retry(deadline=deadline, first=0.01, cap=0.05))
        c._t = script  # type: ignore[assignment]
        return await c._call("status", None)

    return asyncio.run(go())


def test_the_deadline_counts_from_the_outage_not_the_call() -> None:
    # A waited call that ran past the deadline, then lost its connection: retried
    # (a new outage), not failed at once.
    script = _Script(2.5, ConnectionRefusedError(), ConnectionRefusedError(), {"ok": 1})
    assert _play(script, deadline=2.0) == {"ok": 1} and script.attempts == 4
    # Refusals after it do not restart the clock: the call ends at the deadline.
    script = _Script(2.5, SandboxdError("draining", "stopping", status=503))
    with pytest.raises(SandboxdError):
        _play(script, deadline=1.0)
    assert script.attempts > 2
    # Nor do refused connections from the start.
    script = _Script(ConnectionRefusedError())
    with pytest.raises(ConnectionRefusedError):
        _play(script, deadline=0.5)
