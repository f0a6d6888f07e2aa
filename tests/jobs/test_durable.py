"""No accepted job lost: the durable job store and idempotency keys, on real daemons.

A daemon killed with SIGKILL and started again on the same store finishes
every job it acknowledged; an idempotency key names one job across retries
and restarts; lookups tell lost from expired from never issued; and results
live in the store, not in the daemon's memory.
"""

from __future__ import annotations

import base64
import re
import signal
import socket
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import msgspec
from daemon_util import Daemon, frame, recv_frame
from instances import inst

FINAL = ("done", "failed", "cancelled", "lost")
UUID_CMD = ["sh", "-c", "cat /proc/sys/kernel/random/uuid"]  # a new value per execution


def http(d: Daemon, method: str, path: str, body: Any = None, timeout: float = 60, **headers: str) -> Any:
    data = None if body is None else msgspec.json.encode(body)
    req = urllib.request.Request(
        d.http + path, data=data, method=method, headers={"Content-Type": "application/json", **headers}
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, msgspec.json.decode(r.read())
    except urllib.error.HTTPError as e:
        return e.code, msgspec.json.decode(e.read())


def key_header(key: str) -> dict[str, str]:
    return {"Idempotency-Key": key}


def poll(d: Daemon, jid: str, timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        st, info = http(d, "GET", f"/v1/jobs/{jid}?wait=10")
        assert st == 200, (jid, st, info)
        if info["state"] in FINAL or time.monotonic() > deadline:
            return dict(info)


def store_env(tmp: Path, **more: str) -> dict[str, str]:
    return {"SANDBOXD_JOB_STORE": str(tmp / "jobs.sqlite3"), **more}


class Load:
    """8 clients submitting runs and submissions, async and waited, until stopped
    (the daemon's death stops them); each remembers what was acknowledged."""

    def __init__(self, d: Daemon) -> None:
        self.d = d
        self.acked: list[str] = []  # job ids answered 202
        self.waited: list[tuple[str, str, dict[str, Any]]] = []  # (key, path, body) of waited calls cut off
        self.completed = 0
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self.client, args=(i,), daemon=True) for i in range(8)]
        for t in self.threads:
            t.start()

    def body(self, i: int, n: int) -> tuple[str, dict[str, Any]]:
        slow = n % 3 == 0
        if i % 4 == 3:  # a submission
            src = f"{'sleep 0.5; ' if slow else ''}echo {i}-{n}".encode()
            sub = {"lang": "bash", "source": base64.b64encode(src).decode(), "tests": [{"expected": ""}]}
            return "/v1/submissions", sub
        return "/v1/runs", {"cmd": ["sh", "-c", f"{'sleep 0.5; ' if slow else ''}echo {i}-{n}"]}

    def client(self, i: int) -> None:
        n = 0
        while True:
            n += 1
            path, body = self.body(i, n)
            try:
                if n % 2:
                    st, info = http(self.d, "POST", path + "?wait=false", body)
                    if st != 202:
                        return
                    with self.lock:
                        self.acked.append(info["job"])
                else:
                    key = str(uuid.uuid4())
                    with self.lock:
                        self.waited.append((key, path, body))
                    st, _ = http(self.d, "POST", path, body, **key_header(key))
                    with self.lock:
                        self.waited.remove((key, path, body))
                        self.completed += 1
            except OSError:
                return  # the daemon died under this request

    def join(self) -> None:
        for t in self.threads:
            t.join(30)


def test_kill_9_under_load_loses_no_acknowledged_job() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="sandboxd-durable-"))
    d = Daemon(inst("-durable"), pool_size=2, env=store_env(tmp))
    load = Load(d)
    time.sleep(2.0)
    d.proc.send_signal(signal.SIGKILL)
    d.proc.wait()
    load.join()
    d.stop()
    assert load.acked and load.waited, (len(load.acked), load.waited)

    d2 = Daemon(inst("-durable"), pool_size=2, env=store_env(tmp))
    try:
        # Jobs were in flight at the kill, and the new daemon ran them again.
        m = re.search(r"job store: (\d+) unfinished jobs run again, 0 lost", d2.output())
        assert m and int(m.group(1)) > 0, d2.output()
        for jid in load.acked:
            info = poll(d2, jid)
            assert info["state"] == "done", info
            # One final result: asking again gives the same one.
            assert http(d2, "GET", f"/v1/jobs/{jid}")[1] == info
        # A waited call cut off by the kill, retried with its key: the same job's result.
        for key, path, body in load.waited:
            st, info = http(d2, "POST", path + "?wait=false", body, **key_header(key))
            assert st == 202, info
            st, result = http(d2, "POST", path, body, **key_header(key))
            assert st == 200, result
            assert poll(d2, info["job"])["result"] == result
    finally:
        assert d2.stop() == 0, d2.output()


def test_idempotency_keys() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="sandboxd-durable-"))
    d = Daemon(inst("-idem"), pool_size=2, env=store_env(tmp))
    try:
        key = key_header(str(uuid.uuid4()))
        st, first = http(d, "POST", "/v1/runs?wait=false", {"cmd": UUID_CMD}, **key)
        assert st == 202
        st, again = http(d, "POST", "/v1/runs?wait=false", {"cmd": UUID_CMD}, **key)
        assert st == 202 and again["job"] == first["job"]
        # Waited: the same job's result; one execution (one uuid) for all three calls.
        st, result = http(d, "POST", "/v1/runs", {"cmd": UUID_CMD}, **key)
        assert st == 200 and result == poll(d, first["job"])["result"]
        # The same request in another encoding (key order) is the same request.
        st, same = http(d, "POST", "/v1/runs?wait=false", {"limits": {}, "cmd": UUID_CMD}, **key)
        assert st == 202 and same["job"] == first["job"]
        # Another request under the key: refused, nothing runs.
        st, err = http(d, "POST", "/v1/runs", {"cmd": ["echo", "other"]}, **key)
        assert st == 422 and err["error"]["code"] == "conflict" and "Idempotency-Key" in err["error"]["message"]
        st, err = http(d, "POST", "/v1/submissions", {"lang": "bash", "source": "", "tests": [{}]}, **key)
        assert st == 422 and err["error"]["code"] == "conflict"
        for bad in ("has space", "x" * 256, "tab\there"):
            st, err = http(d, "POST", "/v1/runs", {"cmd": ["true"]}, **{"Idempotency-Key": bad})
            assert st == 400 and "Idempotency-Key header" in err["error"]["message"], (bad, err)
        # Without a key, the same request twice is two jobs.
        ids = {http(d, "POST", "/v1/runs?wait=false", {"cmd": UUID_CMD})[1]["job"] for _ in range(2)}
        assert len(ids) == 2

        # Judge0's POST /submissions: the same key gives the same token.
        j0 = {"source_code": "cat /proc/sys/kernel/random/uuid", "language_id": 46}
        st, t1 = http(d, "POST", "/judge0/submissions", j0, **key_header("j0-key"))
        st2, t2 = http(d, "POST", "/judge0/submissions?wait=true", j0, **key_header("j0-key"))
        assert st == st2 == 201 and t1["token"] == t2["token"] and t2["stdout"], (t1, t2)
        st, err = http(d, "POST", "/judge0/submissions", {**j0, "stdin": "x"}, **key_header("j0-key"))
        assert st == 422 and "Idempotency-Key" in err["error"], err

        # The socket: the same key names the same job, a bad key is named...
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(d.sock)
            s.settimeout(30)
            run = {"cmd": UUID_CMD}
            s.sendall(frame({"id": 1, "op": "run", "body": run, "wait": False, "idempotency_key": "sock-1"}))
            a = recv_frame(s)
            s.sendall(frame({"id": 2, "op": "run", "body": run, "wait": False, "idempotency_key": "sock-1"}))
            b = recv_frame(s)
            assert a["ok"] and b["ok"] and a["result"]["job"] == b["result"]["job"]
            s.sendall(frame({"id": 3, "op": "run", "body": {"cmd": ["true"]}, "idempotency_key": "sock-1"}))
            r = recv_frame(s)
            assert r["id"] == 3 and r["error"]["code"] == "conflict"
            s.sendall(frame({"id": 4, "op": "run", "body": run, "idempotency_key": "caf\u00e9"}))
            r = recv_frame(s)
            assert r["id"] == 4 and r["error"]["code"] == "bad_request" and "idempotency_key" in r["error"]["message"]
            # ...and a keyed job outlives the connection that started it (its client comes back).
            slow = {"cmd": ["sh", "-c", "sleep 1; echo kept"]}
            s.sendall(frame({"id": 5, "op": "run", "body": slow, "progress": True, "idempotency_key": "sock-2"}))
            ev = recv_frame(s)
            assert ev["event"] == "accepted"
            kept = ev["data"]["job"]
            s.sendall(frame({"id": 6, "op": "run", "body": slow, "progress": True}))
            cancelled = recv_frame(s)["data"]["job"]
        info = poll(d, kept)
        assert info["state"] == "done" and base64.b64decode(info["result"]["stdout"]) == b"kept\n", info
        assert poll(d, cancelled)["state"] == "cancelled"  # (no key: a vanished client's job stops)
    finally:
        assert d.stop() == 0, d.output()
    # Keys are durable: after a restart the key still names its job.
    d = Daemon(inst("-idem"), pool_size=2, env=store_env(tmp))
    try:
        st, again = http(d, "POST", "/v1/runs?wait=false", {"cmd": UUID_CMD}, **key)
        assert st == 202 and again["job"] == first["job"]
        st, r = http(d, "POST", "/v1/runs", {"cmd": UUID_CMD}, **key)
        assert st == 200 and r == result
    finally:
        assert d.stop() == 0, d.output()


def test_lost_expired_and_never_issued_are_told_apart() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="sandboxd-durable-"))
    env = store_env(tmp, SANDBOXD_RESULTS_TTL="2")
    d = Daemon(inst("-lost"), pool_size=2, env=env)
    try:
        st, info = http(d, "POST", "/v1/runs?wait=false", {"cmd": ["sleep", "600"], "limits": {"wall_time": 600}})
        doomed = info["job"]
        st, info = http(d, "POST", "/v1/runs?wait=true", {"cmd": ["true"]}, **key_header("expiring"))
        st, info = http(d, "POST", "/v1/runs?wait=false", {"cmd": ["true"]}, **key_header("expiring"))
        expiring = info["job"]
        assert poll(d, expiring)["state"] == "done"
        # Two daemons die with the job unfinished: the first restart runs it again...
        states = []
        for _ in range(2):
            d.proc.send_signal(signal.SIGKILL)
            d.proc.wait()
            d.stop()
            d = Daemon(inst("-lost"), pool_size=2, env=env)
            st, info = http(d, "GET", f"/v1/jobs/{doomed}")
            assert st == 200, info
            states.append(info["state"])
        # ...the second says it is lost (200, not 404) rather than running it forever.
        assert states[0] in ("queued", "running") and states[1] == "lost", states
        assert "lost" in info["error"]["message"], info
        time.sleep(2.5)
        st, err = http(d, "GET", f"/v1/jobs/{expiring}")
        assert st == 404 and err["error"]["code"] == "not_found" and "expired" in err["error"]["message"], err
        st, err = http(d, "GET", f"/v1/jobs/{uuid.uuid4()}")
        assert st == 404 and "never issued" in err["error"]["message"], err
        # An expired key is free again: a new job.
        st, info = http(d, "POST", "/v1/runs?wait=false", {"cmd": ["true"]}, **key_header("expiring"))
        assert st == 202 and info["job"] != expiring
    finally:
        assert d.stop() == 0, d.output()


def test_clean_stop_keeps_unfinished_jobs_for_the_next_start() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="sandboxd-durable-"))
    env = store_env(tmp, SANDBOXD_DRAIN_TIMEOUT="0.5")
    d = Daemon(inst("-keep"), pool_size=1, env=env)
    _, info = http(d, "POST", "/v1/runs?wait=false", {"cmd": ["sh", "-c", "sleep 3; echo again"]})
    time.sleep(0.5)
    assert d.stop() == 0, d.output()
    d = Daemon(inst("-keep"), pool_size=1, env=env)
    try:
        info = poll(d, info["job"])
        assert info["state"] == "done" and base64.b64decode(info["result"]["stdout"]) == b"again\n", info
    finally:
        assert d.stop() == 0, d.output()


def _metric(d: Daemon, state: str) -> float:
    req = urllib.request.Request(d.http + "/metrics")
    with urllib.request.urlopen(req, timeout=30) as r:
        text = r.read().decode()
    m = re.search(rf'^sandboxd_jobs{{state="{state}"}} (\S+)$', text, re.M)
    assert m, text
    return float(m.group(1))


def test_results_live_in_the_store_not_in_memory() -> None:
    d = Daemon(inst("-mem"), pool_size=2)
    try:
        n = 400  # more than the daemon's cache of recent results
        ids = [http(d, "POST", "/v1/runs?wait=false", {"cmd": ["true"]})[1]["job"] for _ in range(n)]
        infos = [poll(d, jid) for jid in ids]
        assert all(i["state"] == "done" for i in infos)
        _, status = http(d, "GET", "/v1/status")
        in_memory = sum(status["jobs"].values())
        assert in_memory <= 256 < n, status["jobs"]
        assert _metric(d, "done") <= 256
        # Every one of them is still readable (from the store).
        assert all(http(d, "GET", f"/v1/jobs/{jid}")[1]["state"] == "done" for jid in ids[:50])
    finally:
        assert d.stop() == 0, d.output()
