"""Which jobs a real daemon commits before it answers, per transport, and what
`kill -9` then leaves (issue 14's promise, issue 18's cost): a job whose
client is sent its id (HTTP 202, a socket `accepted` frame or wait=false
reply, an SSE `accepted` event, a Judge0 token) is in the store before that
answer and runs again after the kill; a waited call sent nothing before its
result (HTTP wait=true, a socket run without progress) is not in the store
while it runs, nothing re-runs it at start, and its client's keyed retry runs
it on the new daemon."""

from __future__ import annotations

import base64
import json
import re
import signal
import socket
import sqlite3
import tempfile
import threading
import time
from http.client import HTTPConnection
from pathlib import Path
from typing import Any

from daemon_util import Daemon, frame, recv_frame
from instances import inst
from test_durable import http, key_header, poll, store_env

SLEEPY = "sleep 4; cat /proc/sys/kernel/random/uuid"  # (in flight at the kill; a new value per execution)
RUN = {"cmd": ["sh", "-c", SLEEPY]}


def _unfinished_keys(store: Path) -> set[str]:
    """Keys of the jobs the store holds unfinished (what a restart runs again)."""
    db = sqlite3.connect(f"file:{store}?mode=ro", uri=True)
    try:
        return {k for (k,) in db.execute("SELECT idem_key FROM jobs WHERE finished_at IS NULL") if k}
    finally:
        db.close()


def _in_memory(d: Daemon) -> int:
    jobs = http(d, "GET", "/v1/status")[1]["jobs"]
    return int(jobs.get("queued", 0) + jobs.get("running", 0))


def _sse_accepted(d: Daemon, key: str) -> tuple[HTTPConnection, str]:
    """A submission asked for as an event stream, read up to its `accepted` event
    (left open): the connection and the job id."""
    c = HTTPConnection("127.0.0.1", d.port, timeout=60)
    sub = {"lang": "bash", "source": base64.b64encode(SLEEPY.encode()).decode(), "tests": [{"expected": ""}]}
    headers = {"Content-Type": "application/json", "Accept": "text/event-stream", "Idempotency-Key": key}
    c.request("POST", "/v1/submissions", json.dumps(sub).encode(), headers)
    r = c.getresponse()
    assert r.status == 200, r.status
    while (line := r.fp.readline()) and not line.startswith(b"event: accepted"):
        pass
    data = r.fp.readline()
    assert data.startswith(b"data: "), (line, data)
    return c, str(json.loads(data[6:])["job"])


def _socket_calls(d: Daemon, s: socket.socket) -> list[str]:
    """sock-acked (wait=false: its reply is the job id), sock-progress (waited,
    its `accepted` frame first), sock-waited (waited, no progress: its reply
    would be the result); the job ids its client was sent."""
    s.connect(d.sock)
    s.settimeout(60)
    s.sendall(frame({"id": 1, "op": "run", "body": RUN, "wait": False, "idempotency_key": "sock-acked"}))
    acked = recv_frame(s)
    s.sendall(frame({"id": 2, "op": "run", "body": RUN, "progress": True, "idempotency_key": "sock-progress"}))
    ev = recv_frame(s)
    assert acked["ok"] and ev["event"] == "accepted", (acked, ev)
    s.sendall(frame({"id": 3, "op": "run", "body": RUN, "idempotency_key": "sock-waited"}))
    return [acked["result"]["job"], ev["data"]["job"]]


def _waited_http(d: Daemon, out: list[Any]) -> threading.Thread:
    def call() -> None:
        try:
            out.append(http(d, "POST", "/v1/runs", RUN, **key_header("http-waited")))
        except OSError as e:
            out.append(e)

    t = threading.Thread(target=call, daemon=True)
    t.start()
    return t


def test_only_what_was_acknowledged_is_stored_before_its_end_and_survives_kill_9() -> None:
    """On lead2 every one of them had its row before it started, the two
    waited ones included, and all seven ran again after the kill."""
    tmp = Path(tempfile.mkdtemp(prefix="sandboxd-waited-"))
    env = store_env(tmp)
    d = Daemon(inst("-waited"), pool_size=2, env=env)
    cut: list[Any] = []
    s = socket.socket(socket.AF_UNIX)
    conns: list[HTTPConnection] = []
    acked = {"http-acked", "j0", "sse", "sock-acked", "sock-progress"}
    try:
        t = _waited_http(d, cut)
        st, info = http(d, "POST", "/v1/runs?wait=false", RUN, **key_header("http-acked"))
        assert st == 202
        ids = [info["job"]]
        j0 = {"source_code": SLEEPY, "language_id": 46}
        st, token = http(d, "POST", "/judge0/submissions", j0, **key_header("j0"))
        assert st == 201 and token["token"], token
        ids.append(token["token"])
        sse, jid = _sse_accepted(d, "sse")
        conns.append(sse)
        ids.append(jid)
        ids += _socket_calls(d, s)
        deadline = time.monotonic() + 60
        while _in_memory(d) < 7:  # every call accepted (two running, the rest queued)
            assert time.monotonic() < deadline, http(d, "GET", "/v1/status")
            time.sleep(0.05)
        assert _unfinished_keys(tmp / "jobs.sqlite3") == acked  # (not http-waited, sock-waited)
        d.proc.send_signal(signal.SIGKILL)
        d.proc.wait()
    finally:
        s.close()
        for c in conns:
            c.close()
        d.stop()
    t.join(30)
    assert len(cut) == 1 and isinstance(cut[0], OSError), cut  # (never answered: its client retries)

    d = Daemon(inst("-waited"), pool_size=2, env=env)
    try:
        m = re.search(r"job store: (\d+) unfinished jobs run again, 0 lost", d.output())
        assert m and int(m.group(1)) == len(acked), d.output()  # the acknowledged ones, not the waited
        # The waited calls' keyed retries run them here (nothing of them was left to find).
        st, result = http(d, "POST", "/v1/runs", RUN, **key_header("http-waited"))
        assert st == 200 and result["status"] == "ok" and len(result["stdout"]) > 8, result
        with socket.socket(socket.AF_UNIX) as s2:
            s2.connect(d.sock)
            s2.settimeout(90)
            s2.sendall(frame({"id": 9, "op": "run", "body": RUN, "idempotency_key": "sock-waited"}))
            reply = recv_frame(s2)
            assert reply["ok"] and reply["result"]["status"] == "ok", reply
        # Every acknowledged job finished once, on this daemon.
        for jid in ids:
            assert poll(d, jid)["state"] == "done", jid
        # The retries' rows, final: each key now names its job (once, in the store).
        assert _unfinished_keys(tmp / "jobs.sqlite3") == set()
        st, again = http(d, "POST", "/v1/runs?wait=false", RUN, **key_header("http-waited"))
        assert st == 202 and again["state"] == "done", again
    finally:
        assert d.stop() == 0, d.output()
