"""Both APIs as native jobs: body limits, /v1/jobs and metrics, callbacks,
configurable prefixes, listeners of their own, and what only a fleet does
(records in Redis read through any coordinator, queues of their own)."""

from __future__ import annotations

import base64
import json
import re
import time
import urllib.error
import urllib.request

import judge0
import pytest
from daemon_util import CallbackSink, Daemon, free_port
from instances import inst

from compat.util import FleetStack, Server, http, submit, unb64


def test_oversize_body(server: Server) -> None:
    st, body = http(server, "POST", "/judge0/submissions", b"x" * (5 << 20))
    assert st == 413 and "larger than" in body["error"]
    st, body = http(server, "POST", "/piston/api/v2/execute", b"x" * (5 << 20))
    assert st == 400 and body["stack"].startswith("PayloadTooLargeError")


def test_compat_jobs_are_native_jobs(server: Server) -> None:
    token = submit(server, fields="token", source_code="print(1)", language_id=71, number_of_runs=2)["token"]
    st, job = http(server, "GET", f"/v1/jobs/{token}")
    assert st == 200 and job["kind"] == "submission" and job["result"]["verdict"] == "AC", job
    # Every run's times are kept (Judge0 averages them), only the last one's output.
    runs = job["result"]["runs"]
    assert [unb64(r["stdout"]) for r in runs] == [b"", b"1\n"] and all(r["cpu_time"] > 0 for r in runs)
    assert job["finished_at"] >= job["created_at"] > 0
    _, status = http(server, "GET", "/v1/status")
    assert status["jobs"].get("done", 0) >= 1
    host = server if isinstance(server, Daemon) else server.host
    assert host is not None
    _, metrics = http(host, "GET", "/metrics")
    assert 'sandboxd_verdicts_total{scope="submission",verdict="AC"}' in metrics


@pytest.mark.parametrize("mode", ["daemon", "fleet"])
def test_callback_is_a_put_of_the_default_fields_and_prefixes_are_configurable(mode: str) -> None:
    """Through a fleet, a coordinator PUTs it once Redis has the result, whatever
    made the job final (here: a result, then a cancel)."""
    sink = CallbackSink()
    env = {"SANDBOXD_CALLBACK_ALLOW_PRIVATE": "true", "SANDBOXD_JUDGE0_PREFIX": "/j0", "SANDBOXD_PISTON_PREFIX": ""}
    d: Server = (
        Daemon(inst("-compat-cb"), pool_size=1, env=env) if mode == "daemon" else FleetStack(inst("-compat-cb"), 1, env)
    )
    try:
        url = sink.url
        st, body = http(
            d, "POST", "/j0/submissions", {"source_code": "print('hi')", "language_id": 71, "callback_url": url}
        )
        assert st == 201
        [(method, payload)] = sink.wait(1)
        cb = json.loads(payload)
        assert method == "PUT" and tuple(cb) == (
            "stdout",
            "time",
            "memory",
            "stderr",
            "token",
            "compile_output",
            "message",
            "status",
        )
        assert cb["token"] == body["token"] and cb["stdout"] == "aGkK\n" and cb["status"]["id"] == 3
        # Delivered after the result was stored: what the callback said is what a GET reads.
        st, now = http(d, "GET", f"/j0/submissions/{body['token']}?base64_encoded=true")
        assert st == 200 and now == cb
        # A job that never gets a result (cancelled through the native API) still calls back.
        sleeper = {"source_code": "import time; time.sleep(30)", "language_id": 71, "callback_url": url}
        st, body = http(d, "POST", "/j0/submissions", sleeper)
        assert st == 201
        deadline = time.monotonic() + 30
        while http(d, "GET", f"/j0/submissions/{body['token']}?fields=status_id")[1]["status_id"] != 2:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert http(d, "DELETE", f"/v1/jobs/{body['token']}")[0] == 200
        cb = json.loads(sink.wait(2)[1][1])
        assert cb["token"] == body["token"] and cb["status"] == {"id": 13, "description": "Internal Error"}, cb
        assert base64.b64decode(cb["message"]) == b"cancelled" and len(sink.got) == 2
        assert http(d, "GET", "/judge0/about")[0] == 404 and http(d, "GET", "/piston/api/v2/runtimes")[0] == 404
    finally:
        d.stop()
        sink.close()


@pytest.mark.parametrize("mode", ["daemon", "fleet"])
def test_apis_on_listeners_of_their_own_with_the_bearer_token(mode: str) -> None:
    ports = {"judge0": free_port(), "piston": free_port()}
    own = {
        "SANDBOXD_JUDGE0_HTTP": f"127.0.0.1:{ports['judge0']}",
        "SANDBOXD_PISTON_HTTP": f"127.0.0.1:{ports['piston']}",
    }
    env = {"SANDBOXD_HTTP_TOKEN": "s3cret"}
    d: Server = (
        Daemon(inst("-compat-own"), pool_size=1, env={**env, **own})
        if mode == "daemon"
        else FleetStack(inst("-compat-own"), 1, env, first_coord_env=own)
    )
    auth = {"Authorization": "Bearer s3cret"}
    j0, pis = (f"http://127.0.0.1:{ports[api]}" for api in ("judge0", "piston"))
    try:
        assert http(j0, "GET", "/about")[0] == 401 and http(pis, "GET", "/api/v2/runtimes")[0] == 401
        st, about = http(j0, "GET", "/about", headers=auth)
        assert st == 200 and about["version"] == "1.13.1"
        client = judge0.Client(j0, headers=auth)  # a base URL without a path
        sub = judge0.run(client=client, source_code="print(6 * 7)", language=judge0.PYTHON)
        assert sub.status == judge0.base_types.Status.ACCEPTED and sub.stdout == "42\n"
        ex = {"language": "python", "version": "*", "files": [{"content": "print('OK')"}]}
        st, res = http(pis, "POST", "/api/v2/execute", ex, headers=auth)
        assert st == 200 and res["run"]["stdout"] == "OK\n", res
        # The main listener keeps its prefixes.
        assert http(d, "GET", "/judge0/about", headers=auth)[0] == 200
    finally:
        assert d.stop() == 0, d.output()


# --- through the fleet only ------------------------------------------------------

fleet_only = pytest.mark.parametrize("server", ["fleet"], indirect=True)


@fleet_only
def test_fleet_records_live_in_redis_and_any_coordinator_reads_them(server: FleetStack) -> None:
    subs = [{"source_code": f"print({i})", "language_id": 71} for i in range(3)]
    st, body = http(server, "POST", "/judge0/submissions/batch", {"submissions": subs})
    assert st == 201
    tokens = [t["token"] for t in body]
    other = server.coords[1].http  # not the coordinator that took them
    deadline = time.monotonic() + 30
    while True:
        req = urllib.request.Request(
            f"{other}/judge0/submissions/batch?tokens={','.join(tokens)}&fields=token,stdout,status_id"
        )
        with urllib.request.urlopen(req, timeout=30) as r:
            got = json.loads(r.read())["submissions"]
        if all(g["status_id"] == 3 for g in got) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert got == [{"token": t, "stdout": f"{i}\n", "status_id": 3} for i, t in enumerate(tokens)]
    r = server.redis.client()
    assert r.hget(f"{{sandboxd}}:job:{tokens[0]}", "kind") == b"compat"
    st, _ = http(server, "DELETE", f"/judge0/submissions/{tokens[0]}")
    assert st == 200 and not r.exists(f"{{sandboxd}}:job:{tokens[0]}")
    assert http(server, "GET", f"/judge0/submissions/{tokens[0]}") == (404, None)
    assert http(server, "DELETE", f"/judge0/submissions/{tokens[0]}") == (404, None)
    # Language definitions travel in the host's entry, not in the operators' listing.
    hosts = http(server, "GET", "/v1/hosts")[1]
    assert hosts[0]["id"] == "compat-host" and "definitions" not in hosts[0]


@fleet_only
def test_fleet_compat_jobs_wait_in_queues_of_their_own(server: FleetStack) -> None:
    """In Queue while no host takes them, in a queue an older host never claims from."""
    assert http(server, "POST", "/v1/hosts/compat-host/drain")[0] == 200
    try:
        st, body = http(server, "POST", "/judge0/submissions", {"source_code": "print(5)", "language_id": 71})
        assert st == 201
        token = body["token"]
        st, seen = http(server, "GET", f"/judge0/submissions/{token}?fields=status,finished_at,created_at")
        assert seen["status"] == {"id": 1, "description": "In Queue"} and seen["finished_at"] is None
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", seen["created_at"])
        r = server.redis.client()
        assert r.zrange("{sandboxd}:q:python3||compat", 0, -1) == [token.encode()]
        assert r.zcard("{sandboxd}:q:python3|") == 0
    finally:
        assert http(server, "POST", "/v1/hosts/compat-host/undrain")[0] == 200
    deadline = time.monotonic() + 30
    while (got := http(server, "GET", f"/judge0/submissions/{token}?fields=status_id,stdout"))[1]["status_id"] < 3:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert got == (200, {"stdout": "5\n", "status_id": 3})
