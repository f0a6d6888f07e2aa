"""The Python client's live sessions (sandboxd_client.LiveSession) against a real daemon."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from daemon_util import Daemon
from instances import inst
from sandboxd_client import LiveSession, SandboxdError, SessionStart
from session_util import C_ECHO

TOKEN = "py-session-token"


@pytest.fixture(scope="module")
def daemon() -> Iterator[Daemon]:
    d = Daemon(inst("-py-session"), pool_size=1, env={"SANDBOXD_HTTP_TOKEN": TOKEN})
    yield d
    assert d.stop() == 0, d.output()


def test_echo_and_result(daemon: Daemon) -> None:
    async def go() -> tuple[dict[str, bytes], LiveSession]:
        got = {"stdout": b"", "stderr": b""}
        async with await LiveSession.open(daemon.http, SessionStart(language="c", source=C_ECHO), TOKEN) as s:
            await s.write("one\n")
            await s.write(b"two\n")
            await s.eof()
            async for stream, data in s.output():
                got[stream] += data
        return got, s

    got, s = asyncio.run(go())
    assert got == {"stdout": b"one\ntwo\n", "stderr": b"bye\n"}
    assert s.compiled is not None and s.compiled.status == "ok"
    assert s.end is not None and (s.end.reason, s.end.result.exit_code) == ("exit", 3)


def test_refusal_raises(daemon: Daemon) -> None:
    async def go(start: SessionStart, token: str) -> None:
        async with await LiveSession.open(daemon.http, start, token) as s:
            async for _ in s.output():
                pass

    with pytest.raises(SandboxdError) as e:
        asyncio.run(go(SessionStart(language="python3", source="1"), "wrong"))
    assert e.value.code == "unauthorized"
    with pytest.raises(SandboxdError) as e:
        asyncio.run(go(SessionStart(language="cobol", source="1"), TOKEN))
    assert e.value.code == "bad_request" and "language" in e.value.message
