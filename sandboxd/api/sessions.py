"""GET /v1/sessions: a live session over WebSocket (protocol: docs/sessions.md).

The transport half of sandboxd/jobs/sessions.py: checks the page's Origin
before the upgrade (cross-site WebSocket hijacking), takes the start message
within [sessions] start_timeout, authenticates (Bearer header or the start
message's token: browsers cannot set headers on a WebSocket), then relays
frames both ways.  The route does its own auth (`self_auth`): the HTTP
middleware's would refuse a browser, which has only the start message.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable
from urllib.parse import urlsplit

import msgspec
from aiohttp import WSMsgType, web

from sandboxd import errors
from sandboxd.api import cors, tenantauth
from sandboxd.api.inbound import BodyBudget
from sandboxd.bodyhold import BodyHold
from sandboxd.config import SessionsSettings
from sandboxd.errors import ServiceError
from sandboxd.jobs.tenants import CALLER, Tenants
from sandboxd.schema import Error, Limits, RunResult, SchemaError
from sandboxd.sessionschema import SessionEof, SessionKill, SessionSignal, SessionSignalName, SessionStart
from sandboxd.sessionschema import decode_session_message as decode

if TYPE_CHECKING:
    from sandboxd.jobs.sessions import Ended, Peer

log = logging.getLogger(__name__)

PATH = "/v1/sessions"
# WebSocket close codes (RFC 6455): policy (bad or forbidden start), try again later, internal.
CLOSE_OK, CLOSE_POLICY, CLOSE_AGAIN, CLOSE_INTERNAL = 1000, 1008, 1013, 1011
UNAUTHORIZED = "token: missing or wrong (Authorization: Bearer, or the start's token; or an API key)"
MAX_MESSAGE = 20 << 20  # a start message carries the source (16 MiB at most, sessionschema.MAX_SESSION_SOURCE)
# What one session holds of the memory budget for its life (holder "sessions"):
# the frame being received (aiohttp keeps a message whole until it is
# complete, up to MAX_MESSAGE) and its copy once complete (bytes or str, then
# the decoded start).  A frame cap cannot change after the upgrade (it is
# the parser's, in C), so the bytes a frame may hold are reserved before it.
FRAMES_HOLD = 2 * MAX_MESSAGE
REFUSED_MESSAGE = 4096  # a refused session's cap: nothing it sends is buffered while it is told why


class LiveSession(Protocol):
    """One session as the transport drives it (sandboxd.jobs.sessions.LiveSession)."""

    async def run(self, peer: Peer) -> Ended: ...
    async def write(self, data: bytes) -> None: ...
    def eof(self) -> None: ...
    def signal(self, name: SessionSignalName) -> None: ...
    def kill(self) -> None: ...
    def abandon(self) -> None: ...


@runtime_checkable
class Sessions(Protocol):
    """A host daemon's sessions (sandboxd.jobs.sessions.Sessions); this layer
    names the protocol only, so a coordinator imports no engine through it."""

    settings: SessionsSettings

    def open(self, start: SessionStart, compile_limits: Limits | None = None) -> LiveSession: ...


def result_dict(res: RunResult) -> Any:
    """A RunResult as JSON-ready builtins (bytes as base64, like /v1/runs)."""
    return msgspec.to_builtins(res)


def origin_allowed(request: web.Request) -> bool:
    """No Origin (not a browser), the same origin as the Host it asked, or one
    the API's CORS policy allows ([http] cors_origins)."""
    origin = request.headers.get("Origin")
    if origin is None:
        return True
    parts = urlsplit(origin)
    if parts.netloc and parts.netloc.lower() == request.host.lower():
        return True
    return cors.policy(request).allow_origin(origin) is not None


def bearer_ok(request: web.Request, token: str, given: str = "") -> bool:
    """The Bearer header or the start message's token, compared in constant time."""
    want = token.encode()
    header = request.headers.get("Authorization", "").encode()
    return hmac.compare_digest(header, b"Bearer " + want) or (bool(given) and hmac.compare_digest(given.encode(), want))


def close_code(err: Error) -> int:
    if err.code in ("queue_full", "draining", "rate_limited"):
        return CLOSE_AGAIN
    return CLOSE_POLICY if err.code in ("bad_request", "unauthorized", "forbidden") else CLOSE_INTERNAL


async def send_error(ws: web.WebSocketResponse, err: Error) -> None:
    msg: dict[str, Any] = {"type": "error", "code": err.code, "message": err.message}
    if err.retry_after is not None:
        msg["retry_after"] = err.retry_after
    with contextlib.suppress(ConnectionError, RuntimeError):
        await ws.send_str(msgspec.json.encode(msg).decode())
    await ws.close(code=close_code(err))


def forbidden_origin() -> web.Response:
    """403 before the upgrade: a page of another site may not drive a session
    with the user's credentials (cross-site WebSocket hijacking)."""
    err = errors.make("forbidden", "Origin: not this server's and not in [http] cors_origins")
    return web.json_response({"error": msgspec.to_builtins(err)}, status=errors.http_status(err.code))


async def upgrade(request: web.Request, send_buffer: int, max_msg_size: int = MAX_MESSAGE) -> web.WebSocketResponse:
    ws = web.WebSocketResponse(max_msg_size=max_msg_size, writer_limit=send_buffer, heartbeat=30.0)
    await ws.prepare(request)
    return ws


def hold_frames(budget: BodyBudget | None) -> BodyHold | None:
    """The memory budget's bytes for one session's frames (FRAMES_HOLD),
    reserved before the upgrade; queue_full (retry_after) when they do not
    fit: the session is refused before a frame of it is read."""
    if budget is None:  # (a coordinator: it relays frames one at a time and holds no jobs)
        return None
    hold = budget.try_reserve("sessions", FRAMES_HOLD)
    if hold is None:
        raise errors.error("queue_full", *budget.refuse(FRAMES_HOLD, "a session's frames"))
    return hold


async def refuse(request: web.Request, err: Error) -> web.WebSocketResponse:
    """A session refused before it starts: upgraded (a browser sees only a
    WebSocket's messages and close code, not an HTTP status) with a frame
    cap too small to buffer anything, told why, closed (1013: try again)."""
    ws = await upgrade(request, REFUSED_MESSAGE, REFUSED_MESSAGE)
    await send_error(ws, err)
    return ws


async def read_start(ws: web.WebSocketResponse, timeout: float) -> SessionStart:
    """The start message; ServiceError (bad_request) naming what is wrong."""
    try:
        msg = await ws.receive(timeout)
    except TimeoutError:
        raise errors.error("bad_request", f"start: no start message within {timeout:g} s") from None
    if msg.type != WSMsgType.TEXT:
        raise errors.error("bad_request", "start: the first message must be a text start message")
    try:
        start = decode(msg.data)
    except SchemaError as e:
        raise errors.error("bad_request", f"start: {e}") from None
    if not isinstance(start, SessionStart):
        raise errors.error("bad_request", 'type: the first message must be {"type": "start", ...}')
    return start


class _Peer:
    def __init__(self, ws: web.WebSocketResponse) -> None:
        self.ws = ws

    async def output(self, stream: int, data: bytes) -> None:
        # aiohttp's writer waits here while its buffer is over writer_limit.
        with contextlib.suppress(ConnectionError, RuntimeError):
            await self.ws.send_bytes(bytes((stream,)) + data)

    async def event(self, msg: dict[str, Any]) -> None:
        with contextlib.suppress(ConnectionError, RuntimeError):
            await self.ws.send_str(msgspec.json.encode(msg).decode())


async def relay_input(ws: web.WebSocketResponse, session: LiveSession) -> None:
    """The client's frames into the session, one at a time (a full pipe into
    the box stops this loop, and with it the reading of the socket)."""
    async for msg in ws:
        if msg.type == WSMsgType.BINARY:
            await session.write(msg.data)
        elif msg.type == WSMsgType.TEXT:
            try:
                ctl = decode(msg.data)
            except SchemaError as e:
                await _Peer(ws).event({"type": "error", "code": "bad_request", "message": str(e)})
                continue
            if isinstance(ctl, SessionEof):
                session.eof()
            elif isinstance(ctl, SessionSignal):
                session.signal(ctl.signal)
            elif isinstance(ctl, SessionKill):
                session.kill()
            else:
                await _Peer(ws).event({"type": "error", "code": "bad_request", "message": "type: start sent twice"})


async def drive(ws: web.WebSocketResponse, session: LiveSession) -> None:
    """Run the session to its end; the client closing first kills the run."""
    peer = _Peer(ws)
    run = asyncio.ensure_future(session.run(peer))
    reader = asyncio.ensure_future(relay_input(ws, session))
    try:
        await asyncio.wait([run, reader], return_when=asyncio.FIRST_COMPLETED)
        if not run.done():
            session.abandon()  # the client went away: the box is reset and goes back to its pool
        ended = await run
    finally:
        reader.cancel()
        if not run.done():
            session.abandon()
            with contextlib.suppress(BaseException):
                await run
    msg = {"type": "result", "result": result_dict(ended.result), "reason": ended.reason}
    await peer.event(msg)
    await ws.close(code=CLOSE_OK)


async def serve(
    request: web.Request, sessions: Sessions, token: str, tenants: Tenants, budget: BodyBudget | None = None
) -> web.StreamResponse:
    if not origin_allowed(request):
        return forbidden_origin()
    try:
        hold = hold_frames(budget)
    except ServiceError as e:
        return await refuse(request, e.err)
    try:
        return await _serve(request, sessions, token, tenants)
    finally:
        if hold is not None:
            hold.release()


async def _serve(request: web.Request, sessions: Sessions, token: str, tenants: Tenants) -> web.StreamResponse:
    ws = await upgrade(request, sessions.settings.send_buffer)
    try:
        start = await read_start(ws, sessions.settings.start_timeout)
        # The bearer token or a tenant's key, in the header or the start message.
        creds = [*tenantauth.presented(request, iter(())), *([start.token] if start.token else [])]
        caller = tenantauth.identify(creds, token, tenants, tenantauth.billed(request))
        if caller is None:
            raise errors.error("unauthorized", UNAUTHORIZED)
        bound = CALLER.set(caller)
        try:
            live = sessions.open(start)
        finally:
            CALLER.reset(bound)
        await drive(ws, live)
    except ServiceError as e:
        await send_error(ws, e.err)
    except Exception as e:
        log.exception("session failed")
        await send_error(ws, Error("internal", f"internal error: {e}"))
    return ws
