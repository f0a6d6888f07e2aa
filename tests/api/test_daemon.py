"""The daemon as users meet it: real processes, real sockets, the Python client."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from daemon_util import CallbackSink, Daemon, frame, recv_frame, sum_tests
from instances import inst
from sandboxd_client import AsyncClient, Client, Limits, RunRequest, SandboxdError, Submission, TestCase

from sandboxd.sandbox import cgroups


@pytest.fixture(scope="module")
def daemon() -> Iterator[Daemon]:
    d = Daemon(inst("-daemon"), selftest=True)
    yield d
    assert d.stop() == 0, d.output()


def http(d: Daemon, method: str, path: str, body: Any = None, ctype: str = "application/json", **headers: str) -> Any:
    data = None
    if body is not None:
        data = body if isinstance(body, bytes) else msgspec.json.encode(body)
    req = urllib.request.Request(d.http + path, data=data, method=method, headers={"Content-Type": ctype, **headers})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            raw = r.read()
            return r.status, dict(r.headers), raw
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def test_run_over_the_unix_socket(daemon: Daemon) -> None:
    with Client(f"unix://{daemon.sock}") as c:
        r = c.run(RunRequest(cmd=["sh", "-c", "cat; echo done"], stdin=b"in\n"))
        assert r.status == "ok" and r.stdout == b"in\ndone\n"
        langs = {x["id"]: x for x in c.languages()}
        assert set(langs) == {"bash", "c", "cpp", "cpp20", "go", "java", "javascript", "python3", "rust"}
        assert langs["python3"]["version"].startswith("3.") and langs["java"]["version"].startswith("17")


def test_run_over_http_json_and_msgpack(daemon: Daemon) -> None:
    st, _, raw = http(daemon, "POST", "/v1/runs", {"cmd": ["echo", "hi"]})
    assert st == 200
    assert json.loads(raw)["stdout"] == "aGkK"  # bytes are base64 in JSON
    body = msgspec.msgpack.encode({"cmd": ["echo", "hi"]})
    st, h, raw = http(daemon, "POST", "/v1/runs", body, "application/msgpack")
    assert st == 200 and h["Content-Type"].startswith("application/msgpack")
    assert msgspec.msgpack.decode(raw)["stdout"] == b"hi\n"


def test_http_errors_are_precise(daemon: Daemon) -> None:
    st, _, raw = http(daemon, "POST", "/v1/runs", {"cmd": ["x"], "limits": {"memory": -1}})
    err = json.loads(raw)["error"]
    assert st == 400 and err["code"] == "bad_request" and "limits.memory" in err["message"]
    st, _, raw = http(daemon, "POST", "/v1/runs", b"{not json")
    assert st == 400 and "malformed json" in json.loads(raw)["error"]["message"]
    st, _, raw = http(daemon, "POST", "/v1/submissions", {"lang": "cobol", "source": "", "tests": [{}]})
    assert st == 400 and "cobol" in json.loads(raw)["error"]["message"]
    st, _, raw = http(daemon, "GET", "/v1/jobs/nope")
    assert st == 404
    st, _, raw = http(daemon, "POST", "/v1/runs", b"\x81\xa3cmd\x91\xa2\xff\xfe", "application/msgpack")
    assert st == 400 and "malformed msgpack" in msgspec.msgpack.decode(raw)["error"]["message"]
    st, _, _ = http(daemon, "POST", "/v1/runs", b"x" * (65 << 20))
    assert st == 413


def test_submission_with_progress_events(daemon: Daemon) -> None:
    seen: list[int] = []
    sub = Submission(
        lang="python3",
        source=b"print(int(input()) * 2)",
        tests=[TestCase(str(i).encode(), str(2 * i).encode()) for i in range(10)],
    )
    with Client(f"unix://{daemon.sock}") as c:
        r = c.submit(sub, progress=lambda t: seen.append(t.index))
    assert r.verdict == "AC" and len(r.tests) == 10
    assert sorted(seen) == list(range(10))


def test_async_mode_start_poll_wait(daemon: Daemon) -> None:
    with Client(f"unix://{daemon.sock}") as c:
        jid = c.start(RunRequest(cmd=["sleep", "0.3"]))
        assert c.get(jid).state in ("queued", "running")
        info = c.wait(jid)
        assert info.state == "done" and info.result is not None and info.result.status == "ok"
    with Client(daemon.http) as c:
        jid = c.start(RunRequest(cmd=["echo", "x"]))
        assert c.wait(jid).result.stdout == b"x\n"  # type: ignore[union-attr]


def test_many_concurrent_clients(daemon: Daemon) -> None:
    async def one(i: int) -> bytes:
        async with AsyncClient(f"unix://{daemon.sock}") as c:
            outs = await asyncio.gather(*(c.run(RunRequest(cmd=["echo", f"{i}-{k}"])) for k in range(5)))
            return b"".join(r.stdout for r in outs)

    async def all_() -> list[bytes]:
        return list(await asyncio.gather(*(one(i) for i in range(20))))

    outs = asyncio.run(all_())
    for i, out in enumerate(outs):
        assert out == b"".join(f"{i}-{k}\n".encode() for k in range(5))


def test_cancel_a_running_job_frees_the_box(daemon: Daemon) -> None:
    with Client(f"unix://{daemon.sock}") as c:
        jid = c.start(RunRequest(cmd=["sleep", "30"], limits=Limits(wall_time=60)))
        time.sleep(0.3)
        t0 = time.monotonic()
        c.cancel(jid)
        info = c.wait(jid)
        assert info.state == "cancelled" and time.monotonic() - t0 < 20  # not the 30 s sleep
        assert c.run(RunRequest(cmd=["true"])).status == "ok"


def test_client_disconnect_cancels_its_jobs(daemon: Daemon) -> None:
    async def scenario() -> None:
        async with AsyncClient(f"unix://{daemon.sock}") as c:
            task = asyncio.ensure_future(c.run(RunRequest(cmd=["sleep", "30"], limits=Limits(wall_time=60))))
            await asyncio.sleep(0.3)
        task.cancel()

    asyncio.run(scenario())
    deadline = time.monotonic() + 5
    with Client(f"unix://{daemon.sock}") as c:
        while c.status()["pools"]["host"]["busy"] and time.monotonic() < deadline:
            time.sleep(0.1)
        assert c.status()["pools"]["host"]["busy"] == 0


def test_malformed_frames_get_errors_and_the_connection_survives(daemon: Daemon) -> None:
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(daemon.sock)
        s.settimeout(10)
        s.sendall(frame(b"\xc1garbage"))
        assert recv_frame(s)["error"]["code"] == "bad_request"
        s.sendall(frame({"id": 7, "op": "explode"}))
        r = recv_frame(s)
        assert r["id"] == 7 and r["error"]["code"] == "bad_request"
        s.sendall(frame({"id": 8, "op": "run", "body": {"cmd": "not a list"}}))
        r = recv_frame(s)
        assert r["id"] == 8 and "cmd" in r["error"]["message"]
        s.sendall(frame(b"\x82\xa2id\x05\xa2op\xa2\xff\xfe"))  # invalid UTF-8 in a msgpack str
        assert recv_frame(s)["error"]["code"] == "bad_request"
        s.sendall(frame({"id": 9, "op": "ping"}))
        assert recv_frame(s) == {"id": 9, "ok": True, "result": {"pong": True}}
        s.sendall(struct.pack(">I", 1 << 30))  # larger than max_body: error, then hang up
        assert "frame of" in recv_frame(s)["error"]["message"]


def test_metrics_health_and_status(daemon: Daemon) -> None:
    st, _, raw = http(daemon, "GET", "/metrics")
    assert st == 200
    text = raw.decode()
    for name in ("sandboxd_boxes", "sandboxd_run_seconds_bucket", "sandboxd_jobs", "sandboxd_verdicts_total"):
        assert name in text
    assert http(daemon, "GET", "/healthz")[0] == 200
    st, _, raw = http(daemon, "GET", "/v1/status")
    status = json.loads(raw)
    assert status["pools"]["host"]["capacity"] == 2 and "recent_wall_time" in status
    st, _, raw = http(daemon, "GET", "/openapi.json")
    assert st == 200 and json.loads(raw)["openapi"].startswith("3.")


def test_queue_full_is_rejected_with_retry_after() -> None:
    d = Daemon(inst("-qfull"), pool_size=1, env={"SANDBOXD_QUEUE_DEPTH": "2"})
    try:
        with Client(f"unix://{d.sock}") as c:
            # 1 running + 2 queued; the runner sleeps far longer than any slow
            # machine needs for the checks below, and is cancelled after them,
            # so the queue cannot drain before the refusals are looked at.
            jobs = [c.start(RunRequest(cmd=["sleep", "60"])) for _ in range(3)]
            st, h, raw = http(d, "POST", "/v1/runs", {"cmd": ["true"]})
            assert st == 429 and int(h["Retry-After"]) >= 1
            assert json.loads(raw)["error"]["code"] == "queue_full"
            with pytest.raises(SandboxdError) as e:
                c.run(RunRequest(cmd=["true"]))
            assert e.value.code == "queue_full"
            for j in jobs:
                c.cancel(j)
            assert all(c.wait(j).state in ("cancelled", "done") for j in jobs)
            assert c.run(RunRequest(cmd=["true"])).exit_code == 0
    finally:
        d.stop()


def test_priority_order_under_contention() -> None:
    d = Daemon(inst("-prio"), pool_size=1, env={"SANDBOXD_AGING": "0"})

    async def scenario() -> list[int]:
        done: list[int] = []
        async with AsyncClient(f"unix://{d.sock}") as c:

            async def job(prio: int) -> None:
                await c.run(RunRequest(cmd=["true"], priority=prio))
                done.append(prio)

            blocker = asyncio.ensure_future(c.run(RunRequest(cmd=["sleep", "0.5"])))
            await asyncio.sleep(0.2)
            tasks = []
            for prio in (0, 5, 1, 9, -3, 5):
                tasks.append(asyncio.ensure_future(job(prio)))
                await asyncio.sleep(0.01)  # a fixed arrival order
            await asyncio.gather(blocker, *tasks)
        return done

    try:
        # One box: the queued runs go one at a time, highest priority first.
        assert asyncio.run(scenario()) == [9, 5, 5, 1, 0, -3]
    finally:
        d.stop()


def test_sigterm_drains_running_jobs_and_leaves_nothing() -> None:
    d = Daemon(inst("-drain"), pool_size=1)
    with Client(f"unix://{d.sock}") as c:
        jid = c.start(RunRequest(cmd=["sh", "-c", "sleep 1; echo finished"]))
        time.sleep(0.3)
        d.proc.send_signal(signal.SIGTERM)
        info = c.wait(jid)
        assert info.state == "done" and info.result is not None and info.result.stdout == b"finished\n"
    assert d.stop() == 0
    be = cgroups.detect("pytest-probe", create=False)
    roots = list(be.base.values()) if isinstance(be, cgroups.V1) else [be.root]
    assert not [r for r in roots if (r.parent / inst("-drain")).exists()]
    assert not Path(d.sock).exists()


def test_bearer_token() -> None:
    d = Daemon(inst("-token"), pool_size=1, env={"SANDBOXD_HTTP_TOKEN": "s3cret"})
    try:
        assert http(d, "POST", "/v1/runs", {"cmd": ["true"]})[0] == 401
        st, _, _ = http(d, "POST", "/v1/runs", {"cmd": ["true"]}, Authorization="Bearer s3cret")
        assert st == 200
        with Client(d.http, token="s3cret") as c:
            assert c.run(RunRequest(cmd=["true"])).status == "ok"
    finally:
        d.stop()


def serve_cmd(*args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "sandboxd", "serve", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


def test_bad_config_stops_startup_naming_the_key(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('pool_size = "many"\n')
    p = serve_cmd("--config", str(cfg))
    assert p.returncode == 2 and "pool_size" in p.stderr
    cfg.write_text("no_such_key = 1\n")
    p = serve_cmd("--config", str(cfg))
    assert p.returncode == 2 and "no_such_key" in p.stderr
    p = serve_cmd("--config", "/dev/null", "--http", "0.0.0.0:7070")
    assert p.returncode == 2 and "http.token: required when http.listen is beyond loopback" in p.stderr
    cfg.write_text('[http]\njudge0_listen = "0.0.0.0:2358"\n')
    p = serve_cmd("--config", str(cfg))
    assert p.returncode == 2 and "http.token: required when http.judge0_listen is beyond loopback" in p.stderr
    # A flat key of an older file: read, with its new place named, then checked alike.
    cfg.write_text('piston_http = "127.0.0.1:7070"\n')
    p = serve_cmd("--config", str(cfg), "--http", "127.0.0.1:7070")
    assert "`piston_http` is deprecated: set `piston_listen` under [http]" in p.stderr, p.stderr
    assert p.returncode == 2 and "http.piston_listen: '127.0.0.1:7070' is already http.listen's address" in p.stderr


def test_submit_command_with_a_tests_directory(daemon: Daemon, tmp_path: Path) -> None:
    tests, src = sum_tests(tmp_path, 12, 11)
    cmd = [sys.executable, "-m", "sandboxd", "submit", "--address", f"unix://{daemon.sock}"]
    p = subprocess.run(
        [*cmd, "--lang", "c", "--tests", str(tests), str(src)], capture_output=True, text=True, timeout=120
    )
    assert p.returncode == 1, p.stderr
    lines = p.stdout.splitlines()
    assert lines[-1].startswith("verdict: WA")
    assert "test  11: WA" in p.stdout and "test  10: AC" in p.stdout  # natural order: 10 after 9, not after 1
    p = subprocess.run(
        [*cmd, "--lang", "c", "--tests", str(tmp_path / "none"), str(src)], capture_output=True, text=True
    )
    assert p.returncode == 2 and "no *.in files" in p.stderr


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9/x",
        "http://localhost/x",
        "http://10.1.2.3/x",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]/x",
        "http://[::ffff:127.0.0.1]/x",
        "file:///etc/passwd",
        "http://user:pw@example.com/",
    ],
)
def test_callback_to_private_targets_is_refused(daemon: Daemon, url: str) -> None:
    q = urllib.parse.quote(url, safe="")
    st, _, raw = http(daemon, "POST", f"/v1/runs?wait=false&callback_url={q}", {"cmd": ["true"]})
    assert st == 400, raw
    assert "callback_url" in json.loads(raw)["error"]["message"]


def test_callback_delivers_the_result_when_allowed() -> None:
    sink = CallbackSink()
    d = Daemon(inst("-callback"), pool_size=1, env={"SANDBOXD_CALLBACK_ALLOW_PRIVATE": "true"})
    try:
        q = urllib.parse.quote(sink.url, safe="")
        st, _, raw = http(d, "POST", f"/v1/runs?wait=false&callback_url={q}", {"cmd": ["echo", "cb"]})
        assert st == 202
        job = json.loads(raw)["job"]
        [(method, body)] = sink.wait(1, 10)
        info = json.loads(body)
        assert method == "POST" and info["job"] == job and info["state"] == "done"
        assert info["result"]["stdout"] == "Y2IK"
    finally:
        d.stop()
        sink.close()
