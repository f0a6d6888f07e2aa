"""Live sessions on a coordinator: `GET /v1/sessions` and Piston's
`/api/v2/connect`, each proxied to one host for the session's life.

Proxied rather than redirected (docs/sessions.md): a browser reaches only the
coordinator (hosts sit on a private network), it authenticates once, to the
coordinator, and the page keeps one origin.  The coordinator checks Origin,
its own cap on proxied sessions (`sessions.max_proxied`, refused before the
upgrade), the caller (the bearer token or a tenant's key) and the tenant's
limits, then picks a host that serves the language (not drained, most free
boxes; each host advertises both session URLs in its heartbeat) and relays
frames both ways unchanged, with the same bounds as a host: one frame at a
time each way, so a slow side stops the reading of the other (aiohttp's send
waits while its buffer is over `sessions.send_buffer`).  The host enforces
the session limits and its own cap; its messages and close codes (Piston's
4xxx among them) reach the client unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any, Literal

import aiohttp
import msgspec
from aiohttp import WSMsgType, web

from sandboxd import errors
from sandboxd.api import sessions as api
from sandboxd.api import tenantauth
from sandboxd.api.httpserver import SELF_AUTH, error_reply
from sandboxd.compat import Backend
from sandboxd.compat.piston import connect as piston
from sandboxd.config import SessionsSettings
from sandboxd.errors import ServiceError
from sandboxd.jobs.metrics import FrontendMetrics
from sandboxd.jobs.tenants import CALLER, Caller, Tenants, TenantState
from sandboxd.schema import Error

log = logging.getLogger(__name__)
Hosts = Callable[[], Awaitable[list[dict[str, Any]]]]
# A heartbeat's URL of each route: "sessions" the host's HTTP base, "piston" its connect URL (sandboxd.app.daemon).
Route = Literal["sessions", "piston"]


def pick_host(hosts: list[dict[str, Any]], lang: str, route: Route = "sessions") -> dict[str, Any] | None:
    """The live, undrained host serving `lang` on `route` with the most free boxes."""
    fit = [
        h
        for h in hosts
        if h.get(route) and not h.get("drained") and any(lg.get("id") == lang for lg in h.get("languages", []))
    ]
    return max(fit, key=lambda h: int(h.get("capacity", 0)) - int(h.get("load", 0)), default=None)


def _url(host: dict[str, Any], route: Route) -> str:
    return str(host["sessions"]).rstrip("/") + api.PATH if route == "sessions" else str(host["piston"])


class SessionProxy:
    def __init__(
        self,
        hosts: Hosts,
        settings: SessionsSettings,
        token: str,
        host_token: str,
        metrics: FrontendMetrics,
        tenants: Callable[[], Tenants],
        running: Callable[[str], Awaitable[int]],
        cpu_today: Callable[[str], Awaitable[float]],
    ) -> None:
        self.hosts = hosts
        self.settings = settings
        self.token = token
        self.host_token = host_token  # what the hosts' listeners want (their [http] token)
        self.metrics = metrics
        self.tenants = tenants  # the coordinator's (read at each session: the admin API may replace them)
        self.running = running  # a tenant's jobs in flight fleet-wide (Redis)
        self.cpu_today = cpu_today  # a tenant's CPU seconds today fleet-wide (Redis; sessions' billed by their hosts)
        self.active = 0
        self.held: Counter[str] = Counter()  # live sessions per tenant, on this coordinator
        metrics.sessions_active.set_function(lambda: self.active)

    def _full(self) -> Error | None:
        """The refusal past the cap, before the upgrade (a refused client holds no socket here)."""
        if self.active < self.settings.max_proxied:
            return None
        why = f"{self.active} live sessions, the most this coordinator proxies at once (sessions.max_proxied)"
        return errors.make("queue_full", why + "; retry later", self.settings.queue_wait)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if not api.origin_allowed(request):
            return api.forbidden_origin()
        full = self._full()
        if full is not None:
            return error_reply(request, full)
        ws = await api.upgrade(request, self.settings.send_buffer)
        self.active += 1
        reason, held = "error", None
        try:
            start = await api.read_start(ws, self.settings.start_timeout)
            # The bearer token or a tenant's key, in the header or the start message.
            creds = [*tenantauth.presented(request, iter(())), *([start.token] if start.token else [])]
            caller = tenantauth.identify(creds, self.token, self.tenants())
            if caller is None:
                raise errors.error("unauthorized", api.UNAUTHORIZED)
            held = await self._admit(caller, start.language)
            start.token = ""  # (the client's credential is the coordinator's; the host gets its own in the header)
            reason = await self._proxy(ws, "sessions", start.language, msgspec.json.encode(start).decode(), held)
        except ServiceError as e:
            await api.send_error(ws, e.err)
        except Exception as e:
            log.exception("proxied session failed")
            await api.send_error(ws, Error("internal", f"internal error: {e}"))
        finally:
            self._end(held, reason)
        return ws

    async def piston_connect(self, request: web.Request, backend: Backend) -> web.StreamResponse:
        """Piston's connect (sandboxd.compat.piston.connect): its init checked here,
        as the host would, then relayed as sent.  Authenticated by the HTTP middleware."""
        if not api.origin_allowed(request):
            return api.forbidden_origin()
        full = self._full()
        if full is not None:
            return web.json_response(
                {"message": full.message}, status=errors.http_status(full.code), headers=errors.retry_after_header(full)
            )
        ws = await api.upgrade(request, self.settings.send_buffer)
        self.active += 1
        reason, held = "error", None
        try:
            init = await piston.read_init(ws, backend, self.settings.start_timeout)
            if init is not None:
                job, text = init
                held = await self._admit(CALLER.get(), job.lang)
                reason = await self._proxy(ws, "piston", job.lang, text, held)
        except ServiceError as e:
            await piston.fail(ws, e.err.message)
        except Exception as e:
            log.exception("proxied Piston session failed")
            await piston.fail(ws, f"internal error: {e}")
        finally:
            self._end(held, reason)
        return ws

    async def _admit(self, caller: Caller | None, lang: str) -> str | None:
        """The tenant's checks for a session of `lang`: its languages (403 naming
        the language), its rate, and its concurrency cap, which its sessions on
        this coordinator share with its jobs in flight fleet-wide.  The tenant
        whose place is held (released by _end); None: the unnamed tenant."""
        tenants = self.tenants()
        bound = CALLER.set(caller)
        try:
            charge = tenants.admit(lang, None)[0]
        finally:
            CALLER.reset(bound)
        st = charge.state
        charge.close()  # (its place is the session's: self.held)
        if st is None:
            return None
        name = st.spec.name
        self.held[name] += 1  # (before the await: sessions opening at once all count)
        try:
            await self._within(tenants, st)
        except ServiceError:
            self._release(name)
            raise
        return name

    async def _within(self, tenants: Tenants, st: TenantState) -> None:
        """The fleet-wide limits the enqueue script checks of a job: its daily
        CPU quota (a session's CPU is billed by its host when it ends) and
        its concurrency (this coordinator's sessions and its jobs in flight)."""
        spec = st.spec
        if spec.cpu_seconds_per_day:
            used = await self.cpu_today(spec.name)
            if used >= spec.cpu_seconds_per_day:
                raise tenants.over_quota(st, used)
        if spec.concurrency:
            n = self.held[spec.name] - 1 + await self.running(spec.name)
            if n >= spec.concurrency:
                raise tenants.over_concurrency(st, n)

    def _release(self, name: str | None) -> None:
        if name is not None:
            self.held[name] -= 1
            if self.held[name] <= 0:
                del self.held[name]

    def _end(self, held: str | None, reason: str) -> None:
        self._release(held)
        self.active -= 1
        self.metrics.sessions.labels(reason).inc()

    async def _proxy(self, ws: web.WebSocketResponse, route: Route, lang: str, first: str, tenant: str | None) -> str:
        host = pick_host(await self.hosts(), lang, route)
        if host is None:
            raise errors.error("queue_full", f"no live host serves {lang!r} sessions; retry later", 1.0)
        headers = {"Authorization": f"Bearer {self.host_token}"} if self.host_token else {}
        if tenant is not None and self.host_token:  # (the host bills the session's CPU to it: SessionBills)
            headers[tenantauth.BILLED_HEADER] = tenant
        timeout = aiohttp.ClientWSTimeout(ws_close=5.0)
        async with (
            aiohttp.ClientSession() as http,
            http.ws_connect(
                _url(host, route), headers=headers, max_msg_size=api.MAX_MESSAGE, timeout=timeout, heartbeat=30.0
            ) as upstream,
        ):
            await upstream.send_str(first)
            return await _relay(ws, upstream)


async def _relay(client: web.WebSocketResponse, host: aiohttp.ClientWebSocketResponse) -> str:
    """Frames both ways until either side closes; the session's end reason."""
    seen: dict[str, str] = {"reason": "closed", "close": ""}
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
    # The host's close code and reason (Piston's 4999 "Job Completed", ...), as it closed.
    await client.close(code=host.close_code or api.CLOSE_OK, message=seen["close"].encode()[:123])
    return seen["reason"]


async def _host_to_client(
    host: aiohttp.ClientWebSocketResponse, client: web.WebSocketResponse, seen: dict[str, str]
) -> None:
    while True:
        msg = await host.receive()
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
        elif msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
            seen["close"] = str(msg.extra or "") if msg.type == WSMsgType.CLOSE else ""
            return


async def _client_to_host(client: web.WebSocketResponse, host: aiohttp.ClientWebSocketResponse) -> None:
    async for msg in client:
        if msg.type == WSMsgType.BINARY:
            await host.send_bytes(msg.data)
        elif msg.type == WSMsgType.TEXT:
            await host.send_str(msg.data)


def add_route(app: web.Application, proxy: SessionProxy) -> None:
    app.router.add_get(api.PATH, proxy.handle, name=SELF_AUTH + "sessions")
