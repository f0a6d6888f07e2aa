"""Piston v2's HTTP routes (`POST /api/v2/execute`, `GET /api/v2/runtimes`, `GET /api/v2/packages`,
`GET /`, the `/api/v2/connect` WebSocket: sandboxd.compat.piston.connect) as an aiohttp application."""

from __future__ import annotations

import sys
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from aiohttp import web

from sandboxd.api import sessions as api_sessions
from sandboxd.api.httpserver import INBOUND
from sandboxd.bodyhold import stored
from sandboxd.compat import Backend
from sandboxd.compat.jsonbody import json_body
from sandboxd.compat.piston import request
from sandboxd.compat.piston.connect import ConnectProxy, connect
from sandboxd.compat.piston.errors import PistonError
from sandboxd.compat.piston.runtime import runtimes
from sandboxd.compat.piston.view import response
from sandboxd.errors import TENANT_STATUS, ServiceError

BACKEND: web.AppKey[Backend] = web.AppKey("piston_backend")
# [http] piston_accept_text_plain: a JSON body labelled text/plain is read as JSON (README "Compat").
TEXT_PLAIN: web.AppKey[bool] = web.AppKey("piston_accept_text_plain", bool)
# The Piston release whose API this one follows (its api/package.json), named by `GET /` as Piston does.
PISTON_VERSION = "3.1.1"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def reply(body: Any, status: int = 200) -> web.Response:
    return web.Response(body=msgspec.json.encode(body), status=status, content_type="application/json")


def handler(fn: Handler) -> Handler:
    async def wrapped(req: web.Request) -> web.StreamResponse:
        if req.method not in ("GET", "HEAD", "OPTIONS") and not _json_body(req):
            return reply({"message": "requests must be of type application/json"}, 415)
        try:
            return await fn(req)
        except PistonError as e:
            return reply(e.body, e.status)
        except ServiceError as e:
            status = {"draining": 503, "queue_full": 503, **TENANT_STATUS}.get(e.err.code, 400)
            return reply({"message": e.err.message}, status)

    return wrapped


def _json_body(req: web.Request) -> bool:
    """Piston reads only application/json bodies (else 415).  text/plain too when
    configured: the npm `piston-client` sends its JSON so.  Off by default: a
    text/plain POST is a CORS "simple request" that a browser sends from any page
    without a preflight, so on a listener without a token any web page its user
    opens could run programs here (with a token it cannot: a page cannot add the
    Authorization header without a preflight)."""
    ctype = req.headers.get("Content-Type", "")
    return ctype.startswith("application/json") or (req.app[TEXT_PLAIN] and ctype.startswith("text/plain"))


async def _body(req: web.Request) -> dict[str, Any]:
    # (The body is not kept by the request once decoded, so stored() below gives
    # back what its hold counts: sandboxd.compat.jsonbody.)
    try:
        data = await json_body(req, {})
    except web.HTTPRequestEntityTooLarge:
        # express's body parser error, answered by Piston's error handler with 400 and the stack.
        msg = "request entity too large"
        raise PistonError(400, msg, stack=f"PayloadTooLargeError: {msg}") from None
    # (ValidationError: a number out of range; UnicodeDecodeError: a string that is not UTF-8)
    except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError) as e:
        raise PistonError(400, str(e), stack=f"SyntaxError: {e}") from None
    except RecursionError:
        msg = f"nested deeper than {sys.getrecursionlimit()} levels"
        raise PistonError(400, msg, stack=f"SyntaxError: {msg}") from None
    return data if isinstance(data, dict) else {}


@handler
async def execute(req: web.Request) -> web.Response:
    backend = req.app[BACKEND]
    job = await request.build(backend, await _body(req))
    job_id = str(uuid.uuid4())
    await backend.start_compat(job, job_id)
    stored()  # (its body's other copies are gone: not held while it runs)
    # (A client that hangs up does not stop the run: aiohttp does not cancel
    # handlers, and the run is bounded by its own timeouts.)
    info = await backend.wait_job(job_id)
    # Answered once: nobody can ask for it again, so free the record (and, in
    # a fleet, the spec in Redis) now rather than at results_ttl.
    await backend.forget_job(job_id)
    return reply(response(job, info))


@handler
async def list_runtimes(req: web.Request) -> web.Response:
    out = []
    for rt in runtimes(await req.app[BACKEND].compat_languages()):
        d: dict[str, Any] = {"language": rt.language, "version": rt.version, "aliases": rt.aliases}
        if rt.runtime is not None:
            d["runtime"] = rt.runtime
        out.append(d)
    return reply(out)


@handler
async def list_packages(req: web.Request) -> web.Response:
    """Piston's package list: every runtime here is installed (there is no package manager to ask)."""
    served = await req.app[BACKEND].compat_languages()
    out = [{"language": rt.language, "language_version": rt.version, "installed": True} for rt in runtimes(served)]
    return reply(out)


async def index(req: web.Request) -> web.Response:
    return reply({"message": f"Piston v{PISTON_VERSION}"})


def route_error(status: int, message: str) -> dict[str, str]:
    """Express's fall-through answer, `{"message": "Not Found"}`, for any route Piston lacks
    (it has no 405: a method a route does not take falls through to the same 404)."""
    return {"message": "Not Found" if status == 404 else message}


async def not_found(req: web.Request) -> web.Response:
    return reply({"message": "Not Found"}, 404)


def _connect_route(backend: Backend) -> Callable[[web.Request], Awaitable[web.StreamResponse]] | None:
    """/api/v2/connect's handler: a host daemon runs the session, a coordinator
    proxies it to a host (sandboxd.fleet.sessionproxy); None: neither (no route)."""
    live = getattr(backend, "sessions", None)
    if isinstance(live, api_sessions.Sessions):
        sessions = live

        async def run_here(req: web.Request) -> web.StreamResponse:
            inbound = req.config_dict.get(INBOUND)  # (the session's frames are held from its budget)
            return await connect(req, backend, sessions, inbound.budget if inbound is not None else None)

        return run_here
    if isinstance(live, ConnectProxy):
        proxy = live

        async def proxied(req: web.Request) -> web.StreamResponse:
            return await proxy.piston_connect(req, backend)

        return proxied
    return None


def make_app(backend: Backend, accept_text_plain: bool = False, **app_args: Any) -> web.Application:
    """The Piston v2 API as a sub-application (mounted under `piston_prefix`), or an app of its own
    (at the root of `piston_http`; app_args: middlewares, client_max_size).
    accept_text_plain: [http] piston_accept_text_plain."""
    app = web.Application(**app_args)
    app[BACKEND] = backend
    app[TEXT_PLAIN] = accept_text_plain
    app.router.add_get("/", index)
    for path in ("/api/v2/execute", "/api/v2/execute/"):  # express routes ignore a trailing slash
        app.router.add_post(path, execute)
    for path in ("/api/v2/runtimes", "/api/v2/runtimes/"):
        app.router.add_get(path, list_runtimes)
    for path in ("/api/v2/packages", "/api/v2/packages/"):
        app.router.add_get(path, list_packages)
    ws_connect = _connect_route(backend)
    if ws_connect is not None:
        for path in ("/api/v2/connect", "/api/v2/connect/"):
            app.router.add_get(path, ws_connect)
    app.router.add_route("*", "/{tail:.*}", not_found)
    return app
