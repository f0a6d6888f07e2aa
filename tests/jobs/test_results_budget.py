"""A job's result is in the memory budget from its box's files out until it is
in the job store (holder "results", sandboxd.engine.budget.ResultHold; issue
13's files-out load), and a large reply from its encoding until it is
written.  On lead2 results were held uncounted: one run's 64 MiB of files out
grew the daemon's peak by ~4x that whatever the budget said.  Now a file out
whose bytes (x RESULT_COPIES) do not fit is not read and says why, the rest
of the run's result comes back, and each hold is given back once the result
is saved or the reply written (or its client gone)."""

from __future__ import annotations

import json
import socket
import time

from daemon_util import Daemon, json_http
from instances import inst
from sandboxd_client import Client, Limits, RunRequest

from sandboxd.api.replies import reply_cost
from sandboxd.engine.budget import RESULT_COPIES

MiB = 1 << 20


def results_held(d: Daemon) -> int:
    return int(json_http(d, "GET", "/v1/status")[1]["memory_budget"]["holders"]["results"])


def test_files_out_beyond_the_memory_budget_are_refused_by_name_and_the_hold_given_back() -> None:
    budget, size, n = 48 * MiB, 10 * MiB, 6
    fit = budget // (size * RESULT_COPIES)  # files of this run that fit at once (4)
    paths = [f"f{i}" for i in range(1, n + 1)]
    env = {"SANDBOXD_MEMORY_BUDGET": str(budget), "SANDBOXD_MAX_BODY": str(MiB)}
    d = Daemon(inst("-resbudget"), pool_size=1, env=env)
    try:
        make = f"for i in $(seq {n}); do head -c {size} /dev/zero > f$i; done; echo made"
        req = RunRequest(
            cmd=["sh", "-c", make],
            files_out=paths,
            limits=Limits(memory=128 * MiB, file_size=size),
        )
        with Client(f"unix://{d.sock}") as c:
            jid = c.start(req)
            info = c.wait(jid)
            assert info.state == "done" and info.result is not None, info
            res = info.result
            assert res.status == "ok" and res.stdout == b"made\n", res
            got = [f.content for f in res.files]
            assert got[:fit] == [bytes(size)] * fit, [f.error for f in res.files]
            for f in res.files[fit:]:
                assert f.content is None and f.error is not None, (f.path, f.content and len(f.content))
                assert "not read" in f.error and "memory budget is full" in f.error, f.error
            # Saved: the hold is given back (the store's write is LATER s away, on its thread).
            deadline = time.monotonic() + 30
            while results_held(d) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert results_held(d) == 0
            again = c.get(jid)  # from the store, as it was saved
            assert again.result is not None and [f.error for f in again.result.files] == [f.error for f in res.files]
            # With room again, the same run gets every file it fits.
            info = c.wait(c.start(req))
            assert info.result is not None and [f.content for f in info.result.files][:fit] == [bytes(size)] * fit
        st = json_http(d, "GET", "/v1/status")[1]["memory_budget"]
        assert st["refused"] >= 2 * (n - fit) and st["used"] <= budget, json.dumps(st)
    finally:
        d.stop()


def test_a_large_reply_is_held_while_it_is_sent_and_given_back_when_its_client_goes() -> None:
    # A waited run's 16 MiB file out, in base64 JSON (21 MiB): more than loopback's
    # socket buffers, so while its client reads nothing the reply is still being sent.
    size = 16 * MiB
    env = {"SANDBOXD_MEMORY_BUDGET": str(128 * MiB), "SANDBOXD_MAX_BODY": str(MiB)}
    d = Daemon(inst("-resreply"), pool_size=1, env=env)
    try:
        job = {"cmd": ["sh", "-c", f"head -c {size} /dev/zero > f"], "files_out": ["f"]}
        job["limits"] = {"file_size": size, "memory": 128 * MiB}
        body = json.dumps(job).encode()
        host, port = d.http.removeprefix("http://").split(":")
        s = socket.create_connection((host, int(port)))
        s.sendall(
            f"POST /v1/runs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        s.recv(1)  # (the reply has begun)
        reply = reply_cost(size, "stream")  # the result (its base64 is made a chunk at a time)
        deadline = time.monotonic() + 30
        while results_held(d) != reply and time.monotonic() < deadline:
            time.sleep(0.05)  # (the job's own hold, RESULT_COPIES x, is given back once its result is saved)
        assert results_held(d) == reply
        s.close()  # gone unread: the hold is given back all the same
        deadline = time.monotonic() + 30
        while results_held(d) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert results_held(d) == 0
    finally:
        d.stop()
