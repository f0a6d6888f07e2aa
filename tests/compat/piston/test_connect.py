"""Piston's live WebSocket, /api/v2/connect, as a Piston client speaks it
(api/src/api/v2.js: init, runtime, stage, data, exit, error, signal; close
codes 4000+), against a real daemon with real boxes."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest
from daemon_util import Daemon
from instances import inst
from session_util import C_ECHO, PY_TRAP_INT, Seen, read_piston


@pytest.fixture(scope="module")
def daemon() -> Iterator[Daemon]:
    d = Daemon(inst("-piston-connect"), pool_size=2)
    yield d
    assert d.stop() == 0, d.output()


def piston(d: Daemon, send: list[dict[str, Any]], wait_for: str | None = None, then: list[dict[str, Any]] = []) -> Seen:  # noqa: B006
    async def go() -> Seen:
        seen = Seen()
        url = d.http.replace("http://", "ws://") + "/piston/api/v2/connect"
        async with aiohttp.ClientSession() as http, http.ws_connect(url) as ws:
            for m in send:
                await ws.send_str(json.dumps(m))
            async with asyncio.timeout(60):
                if wait_for is not None:
                    await read_piston(ws, seen, wait_for)
                    for m in then:
                        await ws.send_str(json.dumps(m))
                await read_piston(ws, seen)
        return seen

    return asyncio.run(go())


def init(language: str, source: str, **kw: Any) -> dict[str, Any]:
    return {"type": "init", "language": language, "version": "*", "files": [{"content": source}], **kw}


def stdin(text: str) -> dict[str, Any]:
    return {"type": "data", "stream": "stdin", "data": text}


def test_compiled_program_streams_as_piston_does(daemon: Daemon) -> None:
    s = piston(
        daemon, [init("c", C_ECHO), stdin("hi\n")], wait_for="hi\n", then=[{"type": "signal", "signal": "SIGKILL"}]
    )
    assert s.types()[:4] == ["runtime", "stage", "exit", "stage"]
    assert s.msgs[0]["language"] == "c"
    assert [m["stage"] for m in s.msgs if m["type"] == "stage"] == ["compile", "run"]
    assert s.exits()["compile"]["code"] == 0
    assert s.data("stdout") == "hi\n"
    assert s.exits()["run"]["signal"] == "SIGKILL"
    assert s.close[0] == 4999


def test_signal_and_exit_code(daemon: Daemon) -> None:
    s = piston(daemon, [init("python", PY_TRAP_INT)], wait_for="ready\n", then=[{"type": "signal", "signal": "SIGINT"}])
    assert [m["stage"] for m in s.msgs if m["type"] == "stage"] == ["run"]  # interpreted: no compile stage
    assert s.data("stdout") == "ready\ngot INT\n"
    assert s.exits()["run"]["code"] == 7
    assert s.close[0] == 4999


def test_stderr_and_normal_end(daemon: Daemon) -> None:
    s = piston(daemon, [init("python", "import sys\nprint('out')\nprint('err', file=sys.stderr)")])
    assert (s.data("stdout"), s.data("stderr")) == ("out\n", "err\n")
    assert s.close == (4999, "Job Completed")
    assert s.exits()["run"]["code"] == 0 and s.exits()["run"]["signal"] is None
    assert s.close[0] == 4999


def test_compile_error_ends_after_the_compile_stage(daemon: Daemon) -> None:
    s = piston(daemon, [init("c", "int main( {")])
    assert [m["stage"] for m in s.msgs if m["type"] == "stage"] == ["compile"]
    assert s.exits()["compile"]["code"] not in (0, None)
    assert "run" not in s.exits()
    assert s.close[0] == 4999


@pytest.mark.parametrize(
    ("send", "code"),
    [
        ([stdin("x")], 4003),  # before init
        ([{"type": "signal", "signal": "SIGINT"}], 4003),
        ([init("python", "import time; time.sleep(30)"), init("python", "1")], 4000),
        ([init("python", "import time; time.sleep(30)"), {"type": "data", "stream": "stdout", "data": "x"}], 4004),
        ([init("python", "import time; time.sleep(30)"), {"type": "signal", "signal": "SIGSEGV"}], 4005),
    ],
)
def test_piston_close_codes(daemon: Daemon, send: list[dict[str, Any]], code: int) -> None:
    assert piston(daemon, send).close[0] == code


def test_bad_init_is_an_error_message_then_4002(daemon: Daemon) -> None:
    s = piston(daemon, [{"type": "init", "language": "python", "files": [{"content": "1"}]}])
    assert s.msgs == [{"type": "error", "message": "version is required as a string"}]
    assert s.close[0] == 4002
    s = piston(daemon, [init("cobol", "x")])
    assert s.msgs[0]["type"] == "error" and "runtime is unknown" in s.msgs[0]["message"]


def test_initialization_timeout(daemon: Daemon) -> None:
    assert piston(daemon, []).close[0] == 4001
