"""GET /v1/sessions on a coordinator: the session proxied to one host.

Proxied rather than redirected (docs/sessions.md): a browser reaches only the
coordinator (hosts sit on a private network), it authenticates once, to the
coordinator, and the page keeps one origin.  The coordinator checks Origin
and the token itself, picks a host that serves the language (not drained,
most free boxes; each host advertises its session URL in its heartbeat,
`sessions.advertise`) and relays frames both ways for the session's life,
with the same bounds as a host: one frame at a time each way, so a slow side
stops the reading of the other (aiohttp's send waits while its buffer is
over `sessions.send_buffer`).  The host enforces the limits and its own cap;
its error messages reach the client unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import msgspec
from aiohttp import WSMsgType, web

from sandboxd import errors
from sandboxd.api import sessions as api
from sandboxd.api.httpserver import SELF_AUTH
from sandboxd.config import SessionsSettings
from sandboxd.errors import ServiceError
from sandboxd.jobs.metrics import FrontendMetrics
from sandboxd.schema import Error
from sandboxd.sessionschema import SessionStart

log = logging.getLogger(__name__)
Hosts = Callable[[], Awaitable[list[dict[str, Any]]]]


def pick_host(hosts: list[dict[str, Any]], lang: str) -> dict[str, Any] | None:
    """The live, undrained host serving `lang` with the most free boxes."""
    fit = [
        h
        for h in hosts
        if h.get("sessions") and not h.get("drained") and any(lg.get("id") == lang for lg in h.get("languages", []))
    ]
    return max(fit, key=lambda h: int(h.get("capacity", 0)) - int(h.get("load", 0)), default=None)


class SessionProxy:
    def __init__(
        self, hosts: Hosts, settings: SessionsSettings, token: str, host_token: str, metrics: FrontendMetrics
    ) -> None:
        self.hosts = hosts
        self.settings = settings
        self.token = token
        self.host_token = host_token  # what the hosts' listeners want (their [http] token)
        self.metrics = metrics
        self.active = 0
        metrics.sessions_active.set_function(lambda: self.active)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if not api.origin_allowed(request):
            return api.forbidden_origin()
        ws = await api.upgrade(request, self.settings.send_buffer)
        self.active += 1
        reason = "error"
        try:
            start = await api.read_start(ws, self.settings.start_timeout)
            if self.token and not api.bearer_ok(request, self.token, start.token):
                raise errors.error(
                    "unauthorized", "token: missing or wrong (Authorization: Bearer, or the start's token)"
                )
            reason = await self._proxy(ws, start)
        except ServiceError as e:
            await api.send_error(ws, e.err)
        except Exception as e:
            log.exception("proxied session failed")
            await api.send_error(ws, Error("internal", f"internal error: {e}"))
        finally:
            self.active -= 1
            self.metrics.sessions.labels(reason).inc()
        return ws

    async def _proxy(self, ws: web.WebSocketResponse, start: SessionStart) -> str:
        host = pick_host(await self.hosts(), start.language)
        if host is None:
            raise errors.error("queue_full", f"no live host serves {start.language!r} sessions; retry later", 1.0)
        headers = {"Authorization": f"Bearer {self.host_token}"} if self.host_token else {}
        start.token = ""  # (the client's token is the coordinator's; the host gets its own in the header)
        url = str(host["sessions"]).rstrip("/") + api.PATH
        timeout = aiohttp.ClientWSTimeout(ws_close=5.0)
        async with (
            aiohttp.ClientSession() as http,
            http.ws_connect(
                url, headers=headers, max_msg_size=api.MAX_MESSAGE, timeout=timeout, heartbeat=30.0
            ) as upstream,
        ):
            await upstream.send_str(msgspec.json.encode(start).decode())
            return await _relay(ws, upstream)


async def _relay(client: web.WebSocketResponse, host: aiohttp.ClientWebSocketResponse) -> str:
    """Frames both ways until either side closes; the session's end reason."""
    seen: dict[str, str] = {"reason": "closed"}
    down = asyncio.ensure_future(_host_to_client(host, client, seen))
    up = asyncio.ensure_future(_client_to_host(client, host))
    try:
        await asyncio.wait([down, up], return_when=asyncio.FIRST_COMPLETED)
    finally:
        up.cancel()
        if not down.done():
            # The client left: closing the host's socket ends the run there.
            await host.close()
            down.cancel()
        with contextlib.suppress(BaseException):
            await asyncio.gather(down, up, return_exceptions=True)
    await client.close(code=host.close_code or api.CLOSE_OK)
    return seen["reason"]


async def _host_to_client(
    host: aiohttp.ClientWebSocketResponse, client: web.WebSocketResponse, seen: dict[str, str]
) -> None:
    async for msg in host:
        if msg.type == WSMsgType.BINARY:
            await client.send_bytes(msg.data)
        elif msg.type == WSMsgType.TEXT:
            with contextlib.suppress(msgspec.DecodeError, AttributeError):
                event = msgspec.json.decode(msg.data)
                if event.get("type") == "result":
                    seen["reason"] = str(event.get("reason", "exit"))
                elif event.get("type") == "error":
                    seen["reason"] = "error"
            await client.send_str(msg.data)


async def _client_to_host(client: web.WebSocketResponse, host: aiohttp.ClientWebSocketResponse) -> None:
    async for msg in client:
        if msg.type == WSMsgType.BINARY:
            await host.send_bytes(msg.data)
        elif msg.type == WSMsgType.TEXT:
            await host.send_str(msg.data)


def add_route(app: web.Application, proxy: SessionProxy) -> None:
    app.router.add_get(api.PATH, proxy.handle, name=SELF_AUTH + "sessions")
