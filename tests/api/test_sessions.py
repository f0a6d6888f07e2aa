"""Live sessions over WebSocket (GET /v1/sessions, docs/sessions.md) against a
real daemon with real boxes: streams, signals, limits, refusals, and a client
that leaves mid-run leaving nothing behind."""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest
from daemon_util import Daemon
from instances import inst
from session_util import C_ECHO, PY_SLEEP_FOREVER, PY_TRAP_INT, Transcript, run, session, take, while_one_runs

TOKEN = "session-test-token"
ORIGIN = "https://ide.example.org"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MAX_LENGTH = 4.0


@pytest.fixture(scope="module")
def daemon() -> Iterator[Daemon]:
    env = {
        "SANDBOXD_HTTP_TOKEN": TOKEN,
        "SANDBOXD_HTTP_CORS_ORIGINS": f'["{ORIGIN}"]',
        "SANDBOXD_SESSION_MAX_SESSIONS": "1",
        "SANDBOXD_SESSION_MAX_LENGTH": str(MAX_LENGTH),
        "SANDBOXD_SESSION_QUEUE_WAIT": "2",
    }
    d = Daemon(inst("-sessions"), pool_size=2, env=env)
    yield d
    assert d.stop() == 0, d.output()


def url(d: Daemon) -> str:
    return d.http.replace("http://", "ws://") + "/v1/sessions"


def live(d: Daemon, start: dict[str, Any], stdin: list[Any] = [], **kw: Any) -> Transcript:  # noqa: B006
    return run(session(url(d), start, stdin, headers=kw.pop("headers", AUTH), **kw))


def metric(d: Daemon, name: str) -> float:
    req = urllib.request.Request(f"{d.http}/metrics", headers=AUTH)
    with urllib.request.urlopen(req, timeout=30) as r:
        text = r.read().decode()
    m = re.search(rf"^{re.escape(name)} ([0-9.e+]+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def test_echo_compiled_c_stdout_stderr_eof(daemon: Daemon) -> None:
    t = live(daemon, {"language": "c", "source": C_ECHO}, [b"hello\n", b"wor", b"ld\n", {"type": "eof"}])
    assert [e["type"] for e in t.events] == ["compiled", "started", "result"]
    assert t.of("compiled")[0]["result"]["status"] == "ok"
    assert t.stdout == b"hello\nworld\n"
    assert t.stderr == b"bye\n"  # written after stdin's EOF: eof reached the program
    r = t.result
    assert (r["result"]["status"], r["result"]["exit_code"], r["reason"]) == ("nonzero_exit", 3, "exit")
    assert t.close_code == 1000


def test_initial_stdin_and_argv(daemon: Daemon) -> None:
    src = "import sys\nprint(sys.argv[1:], sys.stdin.read())\n"
    t = live(daemon, {"language": "python3", "source": src, "argv": ["a", "b"], "stdin": "first"}, [{"type": "eof"}])
    assert t.stdout == b"['a', 'b'] first\n"
    assert t.result["result"]["status"] == "ok"


def test_compile_error_ends_with_the_compile_result(daemon: Daemon) -> None:
    t = live(daemon, {"language": "c", "source": "int main( {"})
    assert [e["type"] for e in t.events] == ["compiled", "result"]
    assert t.result["reason"] == "compile_error"
    assert t.result["result"]["status"] != "ok"


async def _interact(d: Daemon, start: dict[str, Any], wait_for: bytes, then: dict[str, Any]) -> Transcript:
    t = Transcript()
    async with aiohttp.ClientSession() as http, http.ws_connect(url(d), headers=AUTH) as ws:
        await ws.send_str(json.dumps({"type": "start", **start}))
        async with asyncio.timeout(60):
            await take(ws, t, until=wait_for)
            await ws.send_str(json.dumps(then))
            await take(ws, t)
    return t


def test_signal_reaches_the_program(daemon: Daemon) -> None:
    sig = {"type": "signal", "signal": "INT"}
    t = run(_interact(daemon, {"language": "python3", "source": PY_TRAP_INT}, b"ready\n", sig))
    assert t.stdout == b"ready\ngot INT\n", t
    assert t.result["result"]["exit_code"] == 7


def test_kill_ends_the_run(daemon: Daemon) -> None:
    src = "print('up', flush=True)\n" + PY_SLEEP_FOREVER
    t = run(_interact(daemon, {"language": "python3", "source": src}, b"up\n", {"type": "kill"}))
    r = t.result
    assert r["reason"] == "killed"
    assert (r["result"]["status"], r["result"]["signal"]) == ("signaled", 9)


def test_kill_is_read_while_the_program_ignores_its_stdin(daemon: Daemon) -> None:
    # 100 KiB the program never reads: more than the pipe into the box holds,
    # within what the session queues, so the kill behind it is still read.
    frames: list[Any] = [b"x" * 10240 for _ in range(10)]
    t = live(
        daemon,
        {"language": "python3", "source": PY_SLEEP_FOREVER, "idle_timeout": 60},
        [*frames, {"type": "kill"}],
        timeout=30,
    )
    assert t.result["reason"] == "killed"  # (unqueued, the kill was read only at the idle timeout: 60 s)


def test_idle_timeout(daemon: Daemon) -> None:
    t = live(daemon, {"language": "python3", "source": PY_SLEEP_FOREVER, "idle_timeout": 1})
    assert t.result["reason"] == "idle"
    assert t.result["result"]["status"] == "time_limit"
    assert "idle" in t.result["result"]["message"]


def test_max_session_length_is_the_wall_limit(daemon: Daemon) -> None:
    # Output every 0.2 s keeps it from idling: only the session's length ends it.
    src = "import time\nwhile True:\n    print('.', flush=True)\n    time.sleep(0.2)\n"
    t = live(daemon, {"language": "python3", "source": src, "limits": {"wall_time": 3000}})
    assert t.result["reason"] == "max_session"
    assert t.result["result"]["status"] == "time_limit"
    assert t.result["result"]["wall_time"] >= MAX_LENGTH


def test_output_limit_counts_stdout_and_stderr_together(daemon: Daemon) -> None:
    # 1500 bytes of stderr first; stdout only after the client saw all of them
    # and closed stdin, so the 2000 bytes are split 1500 + 500 whatever order
    # the daemon reads its two pipes in (a loaded machine fills both at once).
    src = "import os, sys\nos.write(2, b'e' * 1500)\nsys.stdin.read()\nwhile True:\n    os.write(1, b'o' * 300)\n"

    async def go() -> tuple[dict[int, bytes], list[dict[str, Any]]]:
        out, events, sent = {1: b"", 2: b""}, [], False
        async with aiohttp.ClientSession() as http, http.ws_connect(url(daemon), headers=AUTH) as ws:
            start = {"type": "start", "language": "python3", "source": src, "limits": {"output": 2000}}
            await ws.send_str(json.dumps(start))
            async with asyncio.timeout(60):
                async for msg in ws:
                    if msg.type == aiohttp.WSMsgType.BINARY:
                        out[msg.data[0]] += msg.data[1:]
                        if len(out[2]) == 1500 and not sent:
                            await ws.send_str(json.dumps({"type": "eof"}))
                            sent = True
                    elif msg.type == aiohttp.WSMsgType.TEXT:
                        events.append(json.loads(msg.data))
        return out, events

    out, events = asyncio.run(go())
    assert (out[2], out[1]) == (b"e" * 1500, b"o" * 500), events
    r = events[-1]
    assert r["type"] == "result" and (r["reason"], r["result"]["status"]) == ("output_limit", "output_limit"), r
    assert r["result"]["stdout_truncated"]


def test_token_in_start_message(daemon: Daemon) -> None:
    # A browser cannot set Authorization on a WebSocket.
    t = live(daemon, {"language": "python3", "source": "print(1)", "token": TOKEN}, headers={})
    assert t.stdout == b"1\n"


def test_origin_refused_before_upgrade(daemon: Daemon) -> None:
    async def connect(origin: str) -> int:
        async with aiohttp.ClientSession() as http:
            try:
                async with http.ws_connect(url(daemon), headers={**AUTH, "Origin": origin}) as ws:
                    await ws.close()
                    return 101
            except aiohttp.WSServerHandshakeError as e:
                return e.status

    assert run(connect("https://evil.example")) == 403
    assert run(connect(ORIGIN)) == 101  # in [http] cors_origins
    assert run(connect(daemon.http)) == 101  # same origin


def test_session_cap(daemon: Daemon) -> None:
    async def two() -> Transcript:
        second = session(url(daemon), {"language": "python3", "source": "print(1)"}, headers=AUTH)
        return await while_one_runs(url(daemon), AUTH, lambda: second)

    t = run(two())
    assert t.error["code"] == "queue_full"
    assert t.error["retry_after"] > 0
    assert t.close_code == 1013


def _processes_with(marker: str) -> list[int]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if marker.encode() in f.read():
                    found.append(int(pid))
        except OSError:
            continue
    return found


def test_early_close_kills_the_run_and_frees_the_box(daemon: Daemon) -> None:
    marker = f"marker-{uuid.uuid4().hex}"
    before = metric(daemon, 'sandboxd_sessions_total{reason="closed"}')

    async def leave() -> None:
        async with aiohttp.ClientSession() as http, http.ws_connect(url(daemon), headers=AUTH) as ws:
            # A grandchild too, carrying the marker: every process of the run must go.
            src = "import subprocess, sys\n"
            src += "subprocess.Popen(['python3', '-c', 'import time; time.sleep(1000)', sys.argv[1]])\n"
            src += "print('up', flush=True)\n"
            src += PY_SLEEP_FOREVER
            await ws.send_str(json.dumps({"type": "start", "language": "python3", "source": src, "argv": [marker]}))
            t = Transcript()
            async with asyncio.timeout(30):
                await take(ws, t, until=b"up\n")
            assert b"up\n" in t.stdout, t
            deadline = time.monotonic() + 10
            while len(_processes_with(marker)) < 2 and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert len(_processes_with(marker)) == 2  # (the check below can see both)
        # the client is gone without a word

    run(leave())
    deadline = time.monotonic() + 20
    while (_processes_with(marker) or metric(daemon, "sandboxd_sessions_active")) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _processes_with(marker)
    assert metric(daemon, "sandboxd_sessions_active") == 0
    assert metric(daemon, 'sandboxd_sessions_total{reason="closed"}') == before + 1
    # The session's place and a box are free again: the next one runs (max_sessions is 1).
    t = live(daemon, {"language": "python3", "source": "import os\nprint(sorted(os.listdir('/box')))"})
    assert t.result["result"]["status"] == "ok"
    assert t.stdout == b"['main.py']\n"  # nothing of the last session's files either
