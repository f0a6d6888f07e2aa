"""Live sessions through a coordinator: a real redis-server, a host daemon and
a coordinator (tests/fleet_util.py); the coordinator checks the token and the
Origin, proxies the session to the host that advertised its session URL in
its heartbeat, and a client leaving mid-run ends the run on the host."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest
from daemon_util import Daemon
from fleet_util import Coordinator, Fleet, Host
from instances import inst
from session_util import C_ECHO, PY_SLEEP_FOREVER, PY_TRAP_INT, Transcript, run, session, take

TOKEN = "fleet-session-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ENV = {"SANDBOXD_FLEET_LEASE": "2", "SANDBOXD_FLEET_HEARTBEAT": "0.5", "SANDBOXD_HTTP_TOKEN": TOKEN}


class SessionFleet(Fleet):
    """One host of two boxes, waited for until it advertises its session URL."""

    def __init__(self) -> None:
        host = Host(inst("-fleet-sessions"), 2, {**ENV, "SANDBOXD_FLEET_HOST_ID": "s1"})
        super().__init__({"s1": host}, ENV, headers=AUTH, ready=lambda hosts: bool(hosts and hosts[0].get("sessions")))

    def url(self) -> str:
        assert self.coord is not None
        return self.coord.http.replace("http://", "ws://") + "/v1/sessions"


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
