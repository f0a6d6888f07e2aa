"""Idempotency keys at the edges, on a real daemon: a keyed retry gets its
job whatever the queue holds and across a clean stop (sandboxd.jobs.service)."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from daemon_util import Restartable
from instances import inst
from sandboxd_client import Client, RunRequest
from test_durable import http, key_header, poll


@pytest.fixture(scope="module")
def daemon() -> Iterator[Restartable]:
    # One box and one queue place: two jobs fill the daemon.
    env = {"SANDBOXD_QUEUE_DEPTH": "1", "SANDBOXD_DRAIN_TIMEOUT": "0.5"}
    d = Restartable(inst("-keyed-edges"), pool_size=1, env=env)
    yield d
    d.stop()


def _busy(d: Restartable) -> bool:
    return bool(http(d, "GET", "/v1/status")[1]["pools"]["host"]["busy"])


def test_a_keyed_retry_of_a_finished_job_is_answered_when_the_queue_is_full(daemon: Restartable) -> None:
    key = key_header(str(uuid.uuid4()))
    body = {"cmd": ["sh", "-c", "cat /proc/sys/kernel/random/uuid"]}
    st, result = http(daemon, "POST", "/v1/runs", body, **key)
    assert st == 200, result
    st, first = http(daemon, "POST", "/v1/runs?wait=false", body, **key)
    assert st == 202
    time.sleep(0.5)  # its result saved: the key is in the store only, no longer in memory
    slow = [http(daemon, "POST", "/v1/runs?wait=false", {"cmd": ["sleep", "3"]})[1]["job"] for _ in range(2)]
    st, full = http(daemon, "POST", "/v1/runs?wait=false", {"cmd": ["true"]})
    assert st == 429 and full["error"]["code"] == "queue_full", full  # the daemon is full...
    # ...and a retry of the finished job gets that job, not 429 (nothing new to admit).
    st, again = http(daemon, "POST", "/v1/runs?wait=false", body, **key)
    assert st == 202 and again["job"] == first["job"], again
    st, same = http(daemon, "POST", "/v1/runs", body, **key)
    assert st == 200 and same == result, same
    st, err = http(daemon, "POST", "/v1/runs", {"cmd": ["echo", "other"]}, **key)
    assert st == 422 and err["error"]["code"] == "conflict", err
    for jid in slow:
        assert poll(daemon, jid)["state"] == "done"


@pytest.mark.parametrize("transport", ["http", "unix"])
def test_a_waited_call_spanning_a_clean_stop_completes_with_its_job(daemon: Restartable, transport: str) -> None:
    """SIGTERM while the call's job runs, drain_timeout shorter than the job:
    its waiter is told "draining" (not "cancelled", which is final), and the
    client's keyed retry gets the job's result from the restarted daemon (a
    waited call, acknowledged only by its result, is not kept for the next
    start: the retry runs it there; an acknowledged job is kept,
    tests/jobs/test_durable.py)."""
    address = daemon.http if transport == "http" else f"unix://{daemon.sock}"
    with Client(address) as c:
        out: list[Any] = []

        def call() -> None:
            try:
                out.append(c.run(RunRequest(cmd=["/bin/sh", "-c", "sleep 2; echo kept"])))
            except Exception as e:
                out.append(e)

        t = threading.Thread(target=call)
        t.start()
        deadline = time.monotonic() + 30
        while not _busy(daemon):  # the job is running
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert daemon.stop() == 0
        daemon.restart()
        assert "draining: cancelled 1 jobs" in daemon.output()  # (the log of both runs)
        t.join(60)
    assert len(out) == 1 and not isinstance(out[0], Exception), out
    assert out[0].status == "ok" and out[0].stdout == b"kept\n"
