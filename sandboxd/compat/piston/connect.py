"""Piston's live WebSocket, `GET /api/v2/connect`, on the native session runner.

As Piston's api/src/api/v2.js speaks it, so its clients work unchanged:
the client sends `{"type": "init", ...execute fields}` (validated as an
execute request, same messages), then `{"type": "data", "stream": "stdin",
"data": "..."}` and `{"type": "signal", "signal": "SIGINT"}`; the server
sends `runtime`, `stage` (compile, run), `data` (stdout/stderr text), `exit`
(per stage: code, signal) and `error`, and closes with Piston's codes: 4999
job completed, 4000 already initialized, 4001 initialization timeout, 4002
notified error, 4003 not yet initialized, 4004 can only write to stdin,
4005 invalid signal.  As in Piston, the init's stdin is not written (the
stream is the client's) and stdin is never closed.  Differences: the
initialization timeout is [sessions] start_timeout (Piston: 1 s); only the
signals a terminal sends are taken (SIGINT, SIGTERM, SIGHUP, SIGQUIT,
SIGUSR1, SIGUSR2, SIGKILL; others close 4005); the session limits apply
(idle timeout, maximum length, the daemon's session cap: an `error`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any, Protocol, cast, runtime_checkable

import msgspec
from aiohttp import WSMsgType, web

from sandboxd.api import sessions as api
from sandboxd.api.inbound import BodyBudget
from sandboxd.compat import Backend
from sandboxd.compat.piston import request
from sandboxd.compat.piston.errors import PistonError
from sandboxd.compat.piston.view import stage
from sandboxd.errors import ServiceError
from sandboxd.schema import RunResult
from sandboxd.sessionschema import SessionSignalName, SessionStart

DONE, AGAIN, TIMEOUT, ERROR, NOT_INIT, NOT_STDIN, BAD_SIGNAL = 4999, 4000, 4001, 4002, 4003, 4004, 4005
_SIGNALS = {"SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2", "SIGKILL"}
STREAMS = {1: "stdout", 2: "stderr"}


@runtime_checkable
class ConnectProxy(Protocol):
    """A coordinator's sessions (sandboxd.fleet.sessionproxy.SessionProxy):
    the connect proxied to a host that serves the language."""

    async def piston_connect(self, req: web.Request, backend: Backend) -> web.StreamResponse: ...


class _Peer:
    """Native session events as Piston's messages."""

    def __init__(self, ws: web.WebSocketResponse, compiled: bool) -> None:
        self.ws = ws
        self.compiled = compiled

    async def send(self, msg: dict[str, Any]) -> None:
        with contextlib.suppress(ConnectionError, RuntimeError):
            await self.ws.send_str(json.dumps(msg))

    async def output(self, stream: int, data: bytes) -> None:
        await self.send({"type": "data", "stream": STREAMS[stream], "data": data.decode(errors="replace")})

    async def event(self, msg: dict[str, Any]) -> None:
        if msg["type"] == "compiled":
            res = msgspec.convert(msg["result"], RunResult)
            await self.send({"type": "stage", "stage": "compile"})
            for stream, data in ((1, res.stdout), (2, res.stderr)):
                if data:
                    await self.output(stream, data)
            await self.exit("compile", res)
        elif msg["type"] == "started":
            await self.send({"type": "stage", "stage": "run"})

    async def exit(self, name: str, res: RunResult) -> None:
        st = stage(res)
        await self.send({"type": "exit", "stage": name, "error": None, "code": st["code"], "signal": st["signal"]})


async def fail(ws: web.WebSocketResponse, message: str, code: int = ERROR) -> None:
    # Piston: the message goes over the socket first (a close reason is at most 123 bytes).
    if code == ERROR:
        with contextlib.suppress(ConnectionError, RuntimeError):
            await ws.send_str(json.dumps({"type": "error", "message": message}))
    await ws.close(code=code, message=message.encode()[:123])


_REASONS = {AGAIN: "Already Initialized", NOT_INIT: "Not yet initialized", NOT_STDIN: "Can only write to stdin"}


async def read_init(ws: web.WebSocketResponse, backend: Backend, timeout: float) -> tuple[request.Job, str] | None:
    """The init message, checked as an execute request: its job and its text
    (a coordinator forwards it as sent); None once the socket is closed with Piston's code."""
    try:
        msg = await ws.receive(timeout)
    except TimeoutError:
        await ws.close(code=TIMEOUT, message=b"Initialization Timeout")
        return None
    body = _json(msg)
    if body is None or body.get("type") != "init":
        if body is not None and body.get("type") in ("data", "signal"):
            await ws.close(code=NOT_INIT, message=b"Not yet initialized")
        else:
            await fail(ws, "the first message must be init")
        return None
    try:
        return await request.build(backend, body), str(msg.data)
    except PistonError as e:
        await fail(ws, str(e.body.get("message", e)))
        return None


async def _start(ws: web.WebSocketResponse, backend: Backend, sessions: api.Sessions) -> api.LiveSession | None:
    """The init message into a session; None once the socket is closed with Piston's code."""
    init = await read_init(ws, backend, sessions.settings.start_timeout)
    if init is None:
        return None
    job = init[0]
    try:
        start = SessionStart(language=job.lang, files=[job.entry, *job.others], argv=job.args, limits=job.run_limits)
        session = sessions.open(start, job.compile_limits)
    except ServiceError as e:
        await fail(ws, e.err.message)
        return None
    await ws.send_str(json.dumps({"type": "runtime", "language": job.language, "version": job.version}))
    return session


def _json(msg: Any) -> dict[str, Any] | None:
    if msg.type != WSMsgType.TEXT:
        return None
    try:
        data = json.loads(msg.data)
    except ValueError:
        return None
    return cast(dict[str, Any], data) if isinstance(data, dict) else None


async def _relay(ws: web.WebSocketResponse, session: api.LiveSession) -> int | None:
    """The client's messages into the session; a Piston close code for a bad one."""
    async for msg in ws:
        body = _json(msg)
        if body is None:
            if msg.type == WSMsgType.TEXT:
                return ERROR
            continue
        kind = body.get("type")
        if kind == "init":
            return AGAIN
        if kind == "data":
            if body.get("stream") != "stdin":
                return NOT_STDIN
            await session.write(str(body.get("data", "")).encode())
        elif kind == "signal":
            sig = body.get("signal")
            if sig not in _SIGNALS:
                return BAD_SIGNAL
            session.signal(cast(SessionSignalName, str(sig).removeprefix("SIG")))
    return None


async def connect(
    req: web.Request, backend: Backend, sessions: api.Sessions, budget: BodyBudget | None = None
) -> web.StreamResponse:
    if not api.origin_allowed(req):
        return api.forbidden_origin()
    try:
        hold = api.hold_frames(budget)  # (as /v1/sessions: its frames' bytes, before the upgrade)
    except ServiceError as e:
        return await api.refuse(req, e.err)
    try:
        return await _connect(req, backend, sessions)
    finally:
        if hold is not None:
            hold.release()


async def _connect(req: web.Request, backend: Backend, sessions: api.Sessions) -> web.StreamResponse:
    ws = await api.upgrade(req, sessions.settings.send_buffer)
    session = await _start(ws, backend, sessions)
    if session is None:
        return ws
    peer = _Peer(ws, compiled=False)
    run = asyncio.ensure_future(session.run(peer))
    reader = asyncio.ensure_future(_relay(ws, session))
    try:
        await asyncio.wait([run, reader], return_when=asyncio.FIRST_COMPLETED)
        if not run.done():
            session.abandon()
        ended = await run
    except ServiceError as e:
        await fail(ws, e.err.message)
        return ws
    finally:
        reader.cancel()
    bad = reader.result() if reader.done() and not reader.cancelled() else None
    if bad is not None:
        await ws.close(code=bad, message=(_REASONS.get(bad) or "Invalid signal").encode())
        return ws
    if ended.reason != "compile_error":
        await peer.exit("run", ended.result)
    await ws.close(code=DONE, message=b"Job Completed")
    return ws
