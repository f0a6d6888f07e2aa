"""Tenants on a real daemon: the admin API, hashed keys, and each limit's refusal."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from daemon_util import Daemon, frame, recv_frame
from instances import inst
from session_util import Transcript, session
from session_util import run as session_run
from test_daemon import http

from sandboxd.tenancy import hash_key, until_midnight

ADMIN = "admin-tok"
AUTH = {"Authorization": f"Bearer {ADMIN}"}


def _config(d: Path) -> Path:
    cfg = d / "sandboxd.toml"
    cfg.write_text(f'[http]\ntoken = "{ADMIN}"\n[tenants]\nfile = "{d / "tenants.json"}"\n')
    return cfg


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tenants")


@pytest.fixture(scope="module")
def daemon(home: Path) -> Iterator[Daemon]:
    # (2 sessions at once: the tenant's cap of 1, not the daemon's, is what refuses the second)
    d = Daemon(inst("-tenants"), config=_config(home), env={"SANDBOXD_SESSION_MAX_SESSIONS": "2"})
    yield d
    assert d.stop() == 0, d.output()


def make(d: Daemon, **spec: Any) -> str:
    st, _, raw = http(d, "POST", "/v1/tenants", spec, **AUTH)
    assert st == 201, raw
    return str(json.loads(raw)["key"])


def run(d: Daemon, key: str, cmd: list[str] | None = None, path: str = "/v1/runs", **body: Any) -> Any:
    return http(d, "POST", path, {"cmd": cmd or ["true"], **body}, Authorization=f"Bearer {key}")


def test_admin_api_needs_the_token_and_stores_only_hashes(daemon: Daemon, home: Path) -> None:
    key = make(daemon, name="alpha", weight=2)
    assert http(daemon, "POST", "/v1/tenants", {"name": "x"})[0] == 401
    st, _, raw = http(daemon, "GET", "/v1/tenants", Authorization=f"Bearer {key}")
    assert st == 403 and b"admin" in raw  # a tenant's key is no admin
    st, _, raw = http(daemon, "GET", "/v1/tenants", **AUTH)
    assert st == 200 and {t["name"] for t in json.loads(raw)["tenants"]} >= {"alpha"}
    assert key.encode() not in raw and b"key_sha256" not in raw
    on_disk = (home / "tenants.json").read_bytes()
    assert key.encode() not in on_disk and hash_key(key).encode() in on_disk
    assert (home / "tenants.json").stat().st_mode & 0o077 == 0
    assert run(daemon, key)[0] == 200
    assert run(daemon, "sbx_not-a-key")[0] == 401
    st, _, raw = http(daemon, "POST", "/v1/tenants", {"name": "alpha"}, **AUTH)
    assert st == 422  # exists: no silent key replacement
    assert http(daemon, "DELETE", "/v1/tenants/alpha", **AUTH)[0] == 200
    assert run(daemon, key)[0] == 401


def test_rate_limit_answers_429_with_ratelimit_headers(daemon: Daemon) -> None:
    key = make(daemon, name="rated", rate=0.01, burst=2)
    first = run(daemon, key)
    assert first[0] == 200 and first[1]["RateLimit-Limit"] == "2" and first[1]["RateLimit-Remaining"] == "1"
    assert run(daemon, key)[0] == 200
    st, headers, raw = run(daemon, key)
    assert st == 429, raw
    err = json.loads(raw)["error"]
    assert err["code"] == "rate_limited" and "rated" in err["message"]
    assert headers["RateLimit-Remaining"] == "0" and int(headers["RateLimit-Reset"]) > 0
    assert 50 <= int(headers["Retry-After"]) <= 101  # one token at 0.01/s
    assert run(daemon, ADMIN)[0] == 200  # the bearer token (the unnamed tenant) is not limited


def test_languages_refused_with_403_naming_the_language(daemon: Daemon) -> None:
    key = make(daemon, name="pyonly", languages=["python3"])
    st, _, raw = run(daemon, key)
    assert st == 403 and b"'host'" in raw
    sub = {"lang": "c", "source": base64.b64encode(b"int main(){}").decode(), "tests": [{}]}
    st, _, raw = http(daemon, "POST", "/v1/submissions", sub, Authorization=f"Bearer {key}")
    assert st == 403 and b"'c'" in raw and b"python3" in raw


def test_concurrency_cap_holds(daemon: Daemon) -> None:
    key = make(daemon, name="capped", concurrency=1)
    st, _, raw = run(daemon, key, ["sleep", "3"], path="/v1/runs?wait=false")
    assert st in (200, 202), raw
    st, headers, raw = run(daemon, key)
    assert st == 429 and b"cap" in raw and "Retry-After" in headers
    job = json.loads(raw)
    assert job["error"]["code"] == "rate_limited"


def test_cpu_quota_refuses_until_midnight_and_survives_a_restart(home: Path) -> None:
    (home / "q").mkdir()
    d = Daemon(inst("-tenants-q"), config=_config(home / "q"))
    try:
        key = make(d, name="quota", cpu_seconds_per_day=0.2)
        # Burnt to its own CPU clock, not a loop count: a count fast hosts finish under 0.2 s.
        burn = ["python3", "-c", "import time\nwhile time.process_time() < 0.3: pass"]
        st, _, raw = run(d, key, burn)
        assert st == 200 and json.loads(raw)["cpu_time"] > 0.2, raw
        st, headers, raw = run(d, key)
        assert st == 429 and b"CPU seconds" in raw
        assert abs(int(headers["Retry-After"]) - until_midnight(time.time())) < 120
        status = json.loads(http(d, "GET", "/v1/status", **AUTH)[2])["tenants"]["quota"]
        assert status["cpu_seconds_today"] > 0.2
        metrics = http(d, "GET", "/metrics", **AUTH)[2].decode()
        assert 'sandboxd_tenant_refused_total{reason="quota",tenant="quota"} 1.0' in metrics
    finally:
        assert d.stop() == 0, d.output()
    d = Daemon(inst("-tenants-q"), config=_config(home / "q"))
    try:
        assert run(d, key)[0] == 429  # the day's use was persisted
    finally:
        assert d.stop() == 0, d.output()


def test_socket_api_key_gets_the_same_refusal(daemon: Daemon) -> None:
    import socket

    key = make(daemon, name="sock", rate=0.01, burst=1)

    def ask(s: socket.socket, rid: int, api_key: str) -> Any:
        body = msgspec.msgpack.encode({"cmd": ["true"]})
        req = {"id": rid, "op": "run", "body": msgspec.Raw(body), "api_key": api_key}
        s.sendall(frame(req))
        return recv_frame(s)

    with socket.socket(socket.AF_UNIX) as s:
        s.connect(daemon.sock)
        assert ask(s, 1, key)["ok"] is True
        rep = ask(s, 2, key)
        assert rep["ok"] is False and rep["error"]["code"] == "rate_limited" and rep["error"]["retry_after"] > 1
        assert ask(s, 3, "sbx_wrong")["error"]["code"] == "unauthorized"


def test_judge0_and_piston_take_tenant_keys(daemon: Daemon) -> None:
    key = make(daemon, name="compat", languages=["python3"])
    sub = {"source_code": "print(1)", "language_id": 71}
    st, _, raw = http(daemon, "POST", "/judge0/submissions?wait=true", sub, **{"X-Auth-Token": key})
    assert st in (200, 201), raw
    sub = {"source_code": "int main(){}", "language_id": 50}  # C: not this tenant's
    st, _, raw = http(daemon, "POST", "/judge0/submissions?wait=true", sub, **{"X-Auth-Token": key})
    assert st == 403, raw
    piston = {"language": "c", "version": "*", "files": [{"content": "int main(){}"}]}
    st, _, raw = http(daemon, "POST", "/piston/api/v2/execute", piston, Authorization=key)
    assert st == 403, raw
    metrics = http(daemon, "GET", "/metrics", **AUTH)[2].decode()
    assert 'sandboxd_tenant_jobs_total{tenant="compat"} 1.0' in metrics
    assert 'sandboxd_tenant_refused_total{reason="language",tenant="compat"} 2.0' in metrics


def test_a_tenant_sees_only_its_own_usage_and_bad_admin_bodies_name_the_field(daemon: Daemon) -> None:
    key = make(daemon, name="nosy")
    make(daemon, name="other")
    st, _, raw = http(daemon, "GET", "/v1/status", Authorization=f"Bearer {key}")
    assert st == 200 and set(json.loads(raw)["tenants"]) == {"nosy"}
    st, _, raw = http(daemon, "GET", "/v1/status", **AUTH)
    assert {"nosy", "other", "(unnamed)"} <= set(json.loads(raw)["tenants"])
    assert http(daemon, "GET", "/metrics", Authorization=f"Bearer {key}")[0] == 403
    for body, field in (({"name": "bad name"}, "name"), ({"name": "w", "weight": 0}, "weight"), ({"nam": 1}, "nam")):
        st, _, raw = http(daemon, "POST", "/v1/tenants", body, **AUTH)
        assert st == 400 and field.encode() in raw, raw
    assert http(daemon, "DELETE", "/v1/tenants/nobody", **AUTH)[0] == 404


def test_live_sessions_take_tenant_keys_and_their_limits(daemon: Daemon) -> None:
    """A session is one job of its tenant: its key in the header or the start
    message, its languages, its concurrency cap, its CPU charged."""
    key = make(daemon, name="ide", languages=["python3"], concurrency=1)
    ws = daemon.http.replace("http://", "ws://") + "/v1/sessions"
    src = "print(sum(range(10)))\n"
    t = session_run(session(ws, {"language": "python3", "source": src, "token": key}, [{"type": "eof"}]))
    assert t.stdout == b"45\n" and t.result["result"]["status"] == "ok", t.events
    t = session_run(
        session(ws, {"language": "c", "source": "int main(){}"}, headers={"Authorization": f"Bearer {key}"})
    )
    (err,) = t.of("error")
    assert err["code"] == "forbidden" and "'c'" in err["message"] and t.close_code == 1008, t.events
    t = session_run(session(ws, {"language": "python3", "source": src, "token": "sbx_not-a-key"}))
    assert t.of("error")[0]["code"] == "unauthorized"

    async def two_at_once() -> Transcript:
        start = {"language": "python3", "source": "import sys; sys.stdin.read()\n", "token": key}
        first = asyncio.ensure_future(session(ws, start, [], timeout=30))
        await asyncio.sleep(1.0)  # (only ordering: the first holds its place until it is killed below)
        second = await session(ws, start)
        first.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await first
        return second

    second = session_run(two_at_once())
    (err,) = second.of("error")
    assert err["code"] == "rate_limited" and "cap" in err["message"] and second.close_code == 1013, second.events
    raw = http(daemon, "GET", "/v1/status", **AUTH)[2]
    ide = json.loads(raw)["tenants"]["ide"]
    assert ide["jobs"] >= 2 and ide["cpu_seconds"] > 0, ide


def test_a_keyed_retry_of_a_run_whose_priority_was_clamped_is_the_same_job(daemon: Daemon) -> None:
    """The key binds the request as sent (priority 5), not as the tenant's
    max_priority clamped it: a retry while the job is in memory, and one after
    it is saved, get that job; another request with the key is a conflict."""
    key = make(daemon, name="clamped", max_priority=0)
    auth = {"Authorization": f"Bearer {key}", "Idempotency-Key": "clamp-1"}
    body = {"cmd": ["sleep", "0.5"], "priority": 5}
    st, _, raw = http(daemon, "POST", "/v1/runs?wait=false", body, **auth)
    assert st == 202, raw
    job = json.loads(raw)["job"]
    st, _, raw = http(daemon, "POST", "/v1/runs?wait=false", body, **auth)  # (running: in memory)
    assert st == 202 and json.loads(raw)["job"] == job, raw
    st, _, raw = http(daemon, "GET", f"/v1/jobs/{job}?wait=30", Authorization=f"Bearer {key}")
    assert st == 200 and json.loads(raw)["state"] == "done", raw
    time.sleep(0.3)  # (its result saved: out of the in-memory table)
    st, _, raw = http(daemon, "POST", "/v1/runs?wait=false", body, **auth)
    assert st == 202 and json.loads(raw)["job"] == job, raw
    st, _, raw = http(daemon, "POST", "/v1/runs?wait=false", {**body, "priority": 4}, **auth)
    assert st == 422 and json.loads(raw)["error"]["code"] == "conflict", raw
