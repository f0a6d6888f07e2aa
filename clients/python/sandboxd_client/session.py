"""Live sessions (GET /v1/sessions, docs/sessions.md) for asyncio callers.

    async with LiveSession.open("http://127.0.0.1:7070", SessionStart(language="python3", source=src)) as s:
        await s.write(b"hi\\n")
        await s.eof()
        async for stream, data in s.output():   # ("stdout" | "stderr", bytes), until the end
            ...
        end = s.end                              # the result message: result (RunResult), reason

A refusal (bad start, unauthorized, queue_full) raises SandboxdError from
`output()` (with `retry_after`).  Leaving the block early closes the socket:
the daemon kills the run.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import aiohttp
import msgspec

from sandboxd.schema import RunResult
from sandboxd.sessionschema import SessionSignalName, SessionStart

from .client import SandboxdError

STREAMS = {1: "stdout", 2: "stderr"}


@dataclass
class SessionEnd:
    result: RunResult
    reason: str


def session_url(address: str) -> str:
    if not address.startswith(("http://", "https://")):
        raise ValueError(f"address {address!r}: sessions need http://host:port or https://host:port")
    return "ws" + address.removeprefix("http").rstrip("/") + "/v1/sessions"


class LiveSession:
    def __init__(self, http: aiohttp.ClientSession, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._http = http
        self._ws = ws
        self.compiled: RunResult | None = None
        self.end: SessionEnd | None = None

    @classmethod
    async def open(cls, address: str, start: SessionStart, token: str = "") -> LiveSession:
        http = aiohttp.ClientSession()
        try:
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            ws = await http.ws_connect(session_url(address), headers=headers)
            await ws.send_str(msgspec.json.encode(start).decode())
        except BaseException:
            await http.close()
            raise
        return cls(http, ws)

    async def __aenter__(self) -> LiveSession:
        return self

    async def __aexit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        await self.close()

    async def write(self, data: bytes | str) -> None:
        """To the program's stdin; waits while the socket's buffer is full."""
        await self._ws.send_bytes(data.encode() if isinstance(data, str) else data)

    async def eof(self) -> None:
        await self._ws.send_str('{"type":"eof"}')

    async def signal(self, name: SessionSignalName) -> None:
        await self._ws.send_str(json.dumps({"type": "signal", "signal": name}))

    async def kill(self) -> None:
        await self._ws.send_str('{"type":"kill"}')

    async def output(self) -> AsyncIterator[tuple[str, bytes]]:
        """The program's output as it comes, until the session ends (then `end` is set)."""
        async for msg in self._ws:
            if msg.type == aiohttp.WSMsgType.BINARY:
                stream = STREAMS.get(msg.data[0])
                if stream is not None:
                    yield stream, msg.data[1:]
            elif msg.type == aiohttp.WSMsgType.TEXT:
                self._event(json.loads(msg.data))
        if self.end is None:
            raise SandboxdError("disconnected", f"the session closed (code {self._ws.close_code}) without a result")

    def _event(self, ev: dict[str, Any]) -> None:
        if ev["type"] == "compiled":
            self.compiled = msgspec.convert(ev["result"], RunResult)
        elif ev["type"] == "result":
            self.end = SessionEnd(msgspec.convert(ev["result"], RunResult), str(ev.get("reason", "exit")))
        elif ev["type"] == "error":
            raise SandboxdError(ev["code"], ev["message"], retry_after=ev.get("retry_after"))

    async def close(self) -> None:
        await self._ws.close()
        await self._http.close()
