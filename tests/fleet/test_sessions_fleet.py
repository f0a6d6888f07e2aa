"""Live sessions through a coordinator: a real redis-server, a host daemon and
a coordinator (tests/fleet_util.py); the coordinator checks the token (or a
tenant's key, with the tenant's limits), the Origin and its own cap, proxies
the session (native or Piston's connect) to the host that advertised its URL
in its heartbeat, and a client leaving mid-run ends the run on the host."""

from __future__ import annotations

import asyncio
import json
import shutil
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from daemon_util import Daemon
from fleet_util import Coordinator, Fleet, Host
from instances import inst
from session_util import C_ECHO, PY_SLEEP_FOREVER, PY_TRAP_INT, Seen, Transcript, read_piston, run, session, take

from sandboxd.fleet.keys import Keys
from sandboxd.tenancy import utc_day

K = Keys("sandboxd")
TOKEN = "fleet-session-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ENV = {"SANDBOXD_FLEET_LEASE": "2", "SANDBOXD_FLEET_HEARTBEAT": "0.5", "SANDBOXD_HTTP_TOKEN": TOKEN}


class SessionFleet(Fleet):
    """One host of two boxes, waited for until it advertises its session URLs."""

    def __init__(self) -> None:
        self.home = Path(tempfile.mkdtemp(prefix="sandboxd-fleet-sessions-"))
        host = Host(inst("-fleet-sessions"), 2, {**ENV, "SANDBOXD_FLEET_HOST_ID": "s1"})
        # (the coordinator's own tenants file: never a shared state_dir's)
        coord_env = {**ENV, "SANDBOXD_TENANTS_FILE": str(self.home / "tenants.json")}
        super().__init__({"s1": host}, coord_env, headers=AUTH, ready=advertised)

    def tenant(self, **spec: Any) -> str:
        st, res = self.api("POST", "/v1/tenants", spec)
        assert st == 201, res
        return str(res["key"])

    def stop(self) -> None:
        super().stop()
        shutil.rmtree(self.home, ignore_errors=True)

    def url(self) -> str:
        assert self.coord is not None
        return self.coord.http.replace("http://", "ws://") + "/v1/sessions"


def advertised(hosts: list[dict[str, Any]]) -> bool:
    return bool(hosts and hosts[0].get("sessions") and hosts[0].get("piston"))


@pytest.fixture(scope="module")
def fleet() -> Iterator[SessionFleet]:
    f = SessionFleet()
    yield f
    f.stop()


def live(f: SessionFleet, start: dict[str, Any], stdin: list[Any] = [], **kw: Any) -> Transcript:  # noqa: B006
    return run(session(f.url(), start, stdin, headers=kw.pop("headers", AUTH), **kw))  # type: ignore[no-any-return]


def metric(d: Daemon | Coordinator, name: str) -> float:
    req = urllib.request.Request(f"{d.http}/metrics", headers=AUTH)
    with urllib.request.urlopen(req, timeout=30) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    return 0.0


def test_echo_through_the_coordinator(fleet: SessionFleet) -> None:
    t = live(fleet, {"language": "c", "source": C_ECHO}, [b"one\n", b"two\n", {"type": "eof"}])
    assert [e["type"] for e in t.events] == ["compiled", "started", "result"]
    assert (t.stdout, t.stderr) == (b"one\ntwo\n", b"bye\n")
    assert t.result["result"]["exit_code"] == 3
    assert t.close_code == 1000


def test_token_in_start_and_signal_through_the_coordinator(fleet: SessionFleet) -> None:
    async def go() -> Transcript:
        t = Transcript()
        async with aiohttp.ClientSession() as http, http.ws_connect(fleet.url()) as ws:
            start = {"type": "start", "language": "python3", "source": PY_TRAP_INT, "token": TOKEN}
            await ws.send_str(json.dumps(start))
            async with asyncio.timeout(60):
                await take(ws, t, until=b"ready\n")
                await ws.send_str(json.dumps({"type": "signal", "signal": "INT"}))
                await take(ws, t)
        return t

    t = run(go())
    assert t.stdout == b"ready\ngot INT\n"
    assert t.result["result"]["exit_code"] == 7


def test_refusals_at_the_coordinator(fleet: SessionFleet) -> None:
    t = live(fleet, {"language": "python3", "source": "print(1)"}, headers={})
    assert (t.error["code"], t.close_code) == ("unauthorized", 1008)
    t = live(fleet, {"language": "python3", "source": "print(1)", "limits": {"memory": 1}})
    assert t.error["code"] == "bad_request" and "limits.memory" in t.error["message"]
    t = live(fleet, {"language": "cobol", "source": "x"})
    assert t.error["code"] in ("queue_full", "bad_request") and t.close_code in (1013, 1008)

    async def foreign() -> int:
        async with aiohttp.ClientSession() as http:
            try:
                async with http.ws_connect(fleet.url(), headers={**AUTH, "Origin": "https://evil.example"}):
                    return 101
            except aiohttp.WSServerHandshakeError as e:
                return e.status

    assert run(foreign()) == 403


def test_client_leaving_ends_the_run_on_the_host(fleet: SessionFleet) -> None:
    assert fleet.host is not None
    before = metric(fleet.host, 'sandboxd_sessions_total{reason="closed"}')

    async def leave() -> None:
        async with aiohttp.ClientSession() as http, http.ws_connect(fleet.url(), headers=AUTH) as ws:
            src = "print('up', flush=True)\n" + PY_SLEEP_FOREVER
            await ws.send_str(json.dumps({"type": "start", "language": "python3", "source": src}))
            t = Transcript()
            async with asyncio.timeout(30):
                await take(ws, t, until=b"up\n")

    run(leave())
    deadline = time.monotonic() + 20
    while metric(fleet.host, 'sandboxd_sessions_total{reason="closed"}') < before + 1 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert metric(fleet.host, 'sandboxd_sessions_total{reason="closed"}') == before + 1
    assert metric(fleet.host, "sandboxd_sessions_active") == 0
    assert fleet.coord is not None
    assert metric(fleet.coord, "sandboxd_sessions_active") == 0
    t = live(fleet, {"language": "python3", "source": "print(2)"})
    assert t.stdout == b"2\n"


# --- Piston's connect through the coordinator ----------------------------------


def piston(f: SessionFleet, send: list[dict[str, Any]], auth: str = TOKEN) -> Seen:
    async def go() -> Seen:
        seen = Seen()
        assert f.coord is not None
        url = f.coord.http.replace("http://", "ws://") + "/piston/api/v2/connect"
        async with aiohttp.ClientSession() as http, http.ws_connect(url, headers={"Authorization": auth}) as ws:
            for m in send:
                await ws.send_str(json.dumps(m))
            async with asyncio.timeout(60):
                await read_piston(ws, seen)
        return seen

    return run(go())  # type: ignore[no-any-return]


def init(language: str, source: str) -> dict[str, Any]:
    return {"type": "init", "language": language, "version": "*", "files": [{"content": source}]}


def test_piston_connect_through_the_coordinator(fleet: SessionFleet) -> None:
    s = piston(fleet, [init("python", "print(input()[::-1])"), {"type": "data", "stream": "stdin", "data": "abc\n"}])
    assert s.types()[:3] == ["runtime", "stage", "data"], s.msgs
    assert s.msgs[0]["language"] == "python"
    assert s.data("stdout") == "cba\n"
    assert s.msgs[-1] == {"type": "exit", "stage": "run", "error": None, "code": 0, "signal": None}
    assert s.close == (4999, "Job Completed")


def test_piston_refusals_at_the_coordinator(fleet: SessionFleet) -> None:
    s = piston(fleet, [init("nosuch", "x")])
    assert s.types() == ["error"] and "runtime is unknown" in s.msgs[0]["message"], s.msgs
    assert s.close[0] == 4002
    s = piston(fleet, [{"type": "data", "stream": "stdin", "data": "x"}])
    assert s.close == (4003, "Not yet initialized")

    async def handshake(headers: dict[str, str]) -> int:
        assert fleet.coord is not None
        url = fleet.coord.http.replace("http://", "ws://") + "/piston/api/v2/connect"
        async with aiohttp.ClientSession() as http:
            try:
                async with http.ws_connect(url, headers=headers):
                    return 101
            except aiohttp.WSServerHandshakeError as e:
                return e.status

    assert run(handshake({})) == 401  # (the HTTP middleware's: Piston's Authorization header)
    assert run(handshake({"Authorization": TOKEN, "Origin": "https://evil.example"})) == 403


# --- tenants' keys and the coordinator's cap ------------------------------------


async def _hold(url: str, headers: dict[str, str], start: dict[str, Any]) -> tuple[aiohttp.ClientSession, Any]:
    """A session left running (its program printed "up"): (its HTTP session, its socket)."""
    http = aiohttp.ClientSession()
    ws = await http.ws_connect(url, headers=headers)
    src = "print('up', flush=True)\n" + PY_SLEEP_FOREVER
    await ws.send_str(json.dumps({"type": "start", "language": "python3", "source": src, **start}))
    async with asyncio.timeout(60):
        await take(ws, Transcript(), until=b"up\n")
    return http, ws


def test_tenant_keys_and_limits_on_coordinator_sessions(fleet: SessionFleet) -> None:
    key = fleet.tenant(name="sess", languages=["python3"], concurrency=1)
    # The key in the header, and in the start message (a browser's way).
    t = live(fleet, {"language": "python3", "source": "print(6*7)"}, headers={"Authorization": f"Bearer {key}"})
    assert (t.stdout, t.close_code) == (b"42\n", 1000)
    t = live(fleet, {"language": "python3", "source": "print(1)", "token": key}, headers={})
    assert t.stdout == b"1\n"
    t = live(fleet, {"language": "c", "source": C_ECHO, "token": key}, headers={})
    assert (t.error["code"], t.close_code) == ("forbidden", 1008)
    assert "'c'" in t.error["message"] and "sess" in t.error["message"], t.error
    s = piston(fleet, [init("c", C_ECHO)], auth=key)
    assert s.types() == ["error"] and "'c'" in s.msgs[0]["message"] and s.close[0] == 4002, s.msgs

    async def over_cap() -> Transcript:
        http, ws = await _hold(fleet.url(), {}, {"token": key})
        try:
            return await session(fleet.url(), {"language": "python3", "source": "print(2)", "token": key})
        finally:
            await ws.close()
            await http.close()

    second = run(over_cap())
    host_idle(fleet)
    third = live(fleet, {"language": "python3", "source": "print(3)", "token": key}, headers={})
    # The tenant's cap (the coordinator's refusal, not the host's queue_full: the host has a box free for it).
    assert (second.error["code"], second.close_code) == ("rate_limited", 1013), second.events
    assert "cap: 1" in second.error["message"] and second.error["retry_after"] > 0
    assert third.stdout == b"3\n"  # the place was freed


PY_BURN = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.4: pass\nprint('burnt')"


def billed_today(f: SessionFleet, name: str, above: float) -> float:
    """The tenant's CPU seconds today in Redis, once above `above` (the host bills a session as it ends)."""
    r, day = f.redis.client(), K.tenant_day(utc_day(time.time()))
    deadline = time.monotonic() + 20
    while (used := float(r.hget(day, name) or 0)) <= above:
        assert time.monotonic() < deadline, f"{name} billed {used} CPU s, not above {above}"
        time.sleep(0.1)
    return used


def test_sessions_count_against_the_tenants_daily_cpu_quota(fleet: SessionFleet) -> None:
    """A session is no fleet job, so no complete script charged it: on main a
    tenant with a 0.3 s daily quota could burn CPU in sessions all day.  Its
    host bills each proxied session's CPU (compile included) to the tenant
    named by the coordinator, and the coordinator refuses a session once the
    quota is used, on both routes."""
    key = fleet.tenant(name="sess-quota", cpu_seconds_per_day=0.3)
    t = live(fleet, {"language": "python3", "source": PY_BURN, "token": key}, headers={})
    assert t.stdout == b"burnt\n", t.events
    cpu = t.result["result"]["cpu_time"]
    assert cpu >= 0.4, t.result
    used = billed_today(fleet, "sess-quota", 0.3)
    assert abs(used - cpu) < 1e-6, (used, cpu)  # (billed once, what the host measured)
    host_idle(fleet)
    t = live(fleet, {"language": "python3", "source": "print(1)", "token": key}, headers={})
    assert (t.error["code"], t.close_code) == ("rate_limited", 1013), t.events
    assert "CPU seconds today" in t.error["message"] and "sess-quota" in t.error["message"], t.error
    s = piston(fleet, [init("python", "print(1)")], auth=key)
    assert s.types() == ["error"] and "CPU seconds today" in s.msgs[0]["message"], s.msgs
    # Piston's connect is billed too (its exit message carries no CPU time: the host's figure is the one).
    key2 = fleet.tenant(name="sess-quota-piston", cpu_seconds_per_day=100)
    s = piston(fleet, [init("python", PY_BURN)], auth=key2)
    assert "burnt" in "".join(m.get("data", "") for m in s.msgs), s.msgs
    assert billed_today(fleet, "sess-quota-piston", 0.0) >= 0.4
    # The token's own sessions (the unnamed tenant) bill no one.
    assert live(fleet, {"language": "python3", "source": "print(2)"}).stdout == b"2\n"
    billed = set(fleet.redis.client().hkeys(K.tenant_day(utc_day(time.time()))))
    assert billed <= {b"sess", b"sess-quota", b"sess-quota-piston"}, billed


def test_coordinator_cap_refuses_before_the_upgrade(fleet: SessionFleet) -> None:
    capped = Coordinator(fleet.redis.url, {**fleet.coord_env, "SANDBOXD_SESSION_MAX_PROXIED": "1"})
    url = capped.http.replace("http://", "ws://") + "/v1/sessions"

    def plain(path: str) -> tuple[int, dict[str, str], Any]:
        req = urllib.request.Request(capped.http + path, headers=AUTH)
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, dict(r.headers), r.read()
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers), e.read()

    async def full() -> tuple[int, tuple[int, dict[str, str], Any], tuple[int, dict[str, str], Any]]:
        http, ws = await _hold(url, AUTH, {})
        try:
            try:
                async with aiohttp.ClientSession() as h2, h2.ws_connect(url, headers=AUTH):
                    status = 101
            except aiohttp.WSServerHandshakeError as e:
                status = e.status
            return (
                status,
                await asyncio.to_thread(plain, "/v1/sessions"),
                await asyncio.to_thread(plain, "/piston/api/v2/connect"),
            )
        finally:
            await ws.close()
            await http.close()

    try:
        wait_sessions(capped)
        status, native, pist = run(full())
        assert status == 429
        code, headers, body = native
        assert code == 429 and int(headers["Retry-After"]) >= 1
        err = json.loads(body)["error"]
        assert err["code"] == "queue_full" and "sessions.max_proxied" in err["message"]
        code, headers, body = pist
        assert code == 429 and int(headers["Retry-After"]) >= 1
        assert "sessions.max_proxied" in json.loads(body)["message"]
        # The place is freed when the session ends.
        host_idle(fleet)
        t = run(session(url, {"language": "python3", "source": "print(5)"}, headers=AUTH))
        assert t.stdout == b"5\n"
    finally:
        capped.stop()


def wait_sessions(c: Coordinator) -> None:
    deadline = time.monotonic() + 20
    while True:
        req = urllib.request.Request(c.http + "/v1/hosts", headers=AUTH)
        with urllib.request.urlopen(req, timeout=10) as r:
            hosts = json.loads(r.read())
        if hosts and hosts[0].get("sessions"):
            return
        assert time.monotonic() < deadline, hosts
        time.sleep(0.1)


def host_idle(f: SessionFleet) -> None:
    """The host's session place freed (its cap is 1: a session the client left ends there a moment later)."""
    assert f.host is not None
    deadline = time.monotonic() + 20
    while metric(f.host, "sandboxd_sessions_active") > 0:
        assert time.monotonic() < deadline
        time.sleep(0.1)
