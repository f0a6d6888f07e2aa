"""A live-session client for tests: aiohttp's WebSocket client against a real
daemon or coordinator, collecting what the server sends."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

import aiohttp

C_ECHO = r"""
#include <stdio.h>
int main(void) {
    char line[4096];
    setvbuf(stdout, NULL, _IONBF, 0);
    while (fgets(line, sizeof line, stdin)) fputs(line, stdout);
    fputs("bye\n", stderr);
    return 3;
}
"""
PY_SLEEP_FOREVER = "import time\nwhile True: time.sleep(1)\n"
# (os.write in the handler: a signal that lands inside print's flush would make print reentrant)
PY_TRAP_INT = (
    "import os, signal, sys, time\n"
    "def h(s, f):\n    os.write(1, b'got INT\\n'); os._exit(7)\n"
    "signal.signal(signal.SIGINT, h)\nprint('ready', flush=True)\n"
    "while True: time.sleep(1)\n"
)


@dataclass
class Transcript:
    events: list[dict[str, Any]] = field(default_factory=list)
    stdout: bytes = b""
    stderr: bytes = b""
    close_code: int | None = None

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("type") == kind]

    @property
    def result(self) -> dict[str, Any]:
        (r,) = self.of("result")
        return r

    @property
    def error(self) -> dict[str, Any]:
        (e,) = self.of("error")
        return e


async def take(ws: aiohttp.ClientWebSocketResponse, t: Transcript, until: bytes | None = None) -> None:
    """Read until the socket closes, or until stdout holds `until`."""
    async for msg in ws:
        if msg.type == aiohttp.WSMsgType.TEXT:
            t.events.append(json.loads(msg.data))
        elif msg.type == aiohttp.WSMsgType.BINARY:
            stream, data = msg.data[0], msg.data[1:]
            if stream == 1:
                t.stdout += data
            else:
                t.stderr += data
        if until is not None and until in t.stdout:
            return
    t.close_code = ws.close_code


async def session(
    url: str,
    start: dict[str, Any],
    stdin: list[bytes | dict[str, Any]] = (),  # type: ignore[assignment]
    headers: dict[str, str] | None = None,
    timeout: float = 60,
) -> Transcript:
    """Open, send start then each of `stdin` (bytes: a binary frame, dict: a
    control message), read to the end."""
    t = Transcript()
    async with aiohttp.ClientSession() as http, http.ws_connect(url, headers=headers or {}) as ws:
        await ws.send_str(json.dumps({"type": "start", **start}))
        for item in stdin:
            if isinstance(item, bytes):
                await ws.send_bytes(item)
            else:
                await ws.send_str(json.dumps(item))
        async with asyncio.timeout(timeout):
            await take(ws, t)
    return t


async def while_one_runs(url: str, headers: dict[str, str], during: Any) -> Any:
    """await during() while a session sleeping forever is live (started),
    then kill it and read it to its result (a session still ending holds its
    place and its memory budget, so the next test would find them taken)."""
    async with aiohttp.ClientSession() as http, http.ws_connect(url, headers=headers) as first:
        await first.send_str(json.dumps({"type": "start", "language": "python3", "source": PY_SLEEP_FOREVER}))
        msg = await first.receive(30)
        assert json.loads(msg.data)["type"] == "started", msg
        got = await during()
        await first.send_str(json.dumps({"type": "kill"}))
        async with asyncio.timeout(30):
            async for msg in first:
                if msg.type == aiohttp.WSMsgType.TEXT and json.loads(msg.data)["type"] == "result":
                    break
        return got


def run(coro: Any) -> Any:
    return asyncio.run(coro)


# --- Piston's /api/v2/connect, as a Piston client speaks it -------------------


class Seen:
    """What a Piston connect sent: its messages, and how it closed."""

    def __init__(self) -> None:
        self.msgs: list[dict[str, Any]] = []
        self.close: tuple[int | None, str] = (None, "")

    def types(self) -> list[str]:
        return [m["type"] for m in self.msgs]

    def data(self, stream: str) -> str:
        return "".join(m["data"] for m in self.msgs if m["type"] == "data" and m["stream"] == stream)

    def exits(self) -> dict[str, dict[str, Any]]:
        return {m["stage"]: m for m in self.msgs if m["type"] == "exit"}


async def read_piston(ws: aiohttp.ClientWebSocketResponse, seen: Seen, until: str | None = None) -> None:
    """Read until the socket closes, or until stdout holds `until`."""
    while True:
        msg = await ws.receive()
        if msg.type == aiohttp.WSMsgType.TEXT:
            seen.msgs.append(json.loads(msg.data))
            if until is not None and until in seen.data("stdout"):
                return
        elif msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING):
            seen.close = (ws.close_code, msg.extra or "")
            return
