"""HTTP API (aiohttp): the same operations as the Unix socket, JSON or msgpack bodies.

Request body format follows Content-Type (application/json, application/msgpack
or application/x-msgpack); the reply uses Accept, else the request's format.
In JSON, bytes fields (stdin, source, stdout...) are base64 strings.

Other HTTP APIs plug in with `mount(name, factory)` (sandboxd.compat registers
Judge0 and Piston): make_app mounts each under the prefix the app layer gives
it, make_api_app serves one alone at the root of a listener of its own.  This
module names none of them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import msgspec
from aiohttp import web

from sandboxd import errors
from sandboxd.api import cors, files, pages, sessions, sse, streamjson, tenantauth, textmode
from sandboxd.api.decodepool import DECODE
from sandboxd.api.httpguard import GUARDS, RETRY_AFTER
from sandboxd.api.inbound import Inbound
from sandboxd.api.inbound import default as default_inbound
from sandboxd.api.negotiate import encode, fmt_in, fmt_out
from sandboxd.api.openapi import document
from sandboxd.api.receive import receive, take_body
from sandboxd.api.wire import Frontend, check_idempotency_key, dispatch
from sandboxd.bodyhold import BODY
from sandboxd.config import HTTP
from sandboxd.errors import ServiceError
from sandboxd.jobs.tenants import CALLER, Caller
from sandboxd.schema import Error, TestResult

log = logging.getLogger(__name__)

SVC: web.AppKey[Frontend] = web.AppKey("service")
TOKEN: web.AppKey[str] = web.AppKey("token", str)
SVC_MAX_BODY: web.AppKey[int] = web.AppKey("max_body", int)
INBOUND: web.AppKey[Inbound] = web.AppKey("inbound", Inbound)
# (API name, prefix) of the registered APIs mounted on the app: its OpenAPI document lists them.
MOUNTED: web.AppKey[tuple[tuple[str, str], ...]] = web.AppKey("mounted", tuple)

# An HTTP API on a Frontend: factory(frontend, **aiohttp.web.Application kwargs).
MountFactory = Callable[..., web.Application]
_MOUNTS: dict[str, MountFactory] = {}
# Headers that carry the bearer token's value as is, on an app (a plug-in's:
# Judge0's X-Auth-Token), besides `Authorization: Bearer`.
TOKEN_HEADERS: web.AppKey[tuple[str, ...]] = web.AppKey("token_headers", tuple)
_TOKEN_HEADERS: dict[str, tuple[str, ...]] = {}
# An API's body for a route it lacks (404) or a method a route does not take
# (405): (status, message) -> the JSON body in its own error shape.
RouteError = Callable[[int, str], Any]
_ROUTE_ERRORS: dict[str, RouteError] = {}
ROUTE_ERRORS: web.AppKey[tuple[tuple[str, RouteError], ...]] = web.AppKey("route_errors", tuple)


def mount(
    name: str, factory: MountFactory, token_headers: tuple[str, ...] = (), route_error: RouteError | None = None
) -> None:
    """Register an HTTP API (a plug-in's: "judge0", "piston") to serve on the same Frontend.
    token_headers: its own auth headers, accepted on its routes (and allowed by its CORS policy).
    route_error: its 404/405 body (default: the native one)."""
    known = _MOUNTS.get(name)
    if known is not None and known is not factory:
        raise ValueError(f"HTTP API {name!r} is registered already")
    _MOUNTS[name] = factory
    _TOKEN_HEADERS[name] = token_headers
    if route_error is not None:
        _ROUTE_ERRORS[name] = route_error


def mounted() -> list[str]:
    return list(_MOUNTS)


def reply(req: web.Request, payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    body, ctype = encode(fmt_out(req), payload)
    return web.Response(body=body, status=status, content_type=ctype, headers=headers)


async def big_reply(req: web.Request, payload: Any, status: int = 200, text: bool = False) -> web.StreamResponse:
    """reply() of a result, which may be large (sandboxd.api.streamjson.reply).
    text: JSON's text mode, as the request asked (sandboxd.api.textmode)."""
    fmt, inbound = fmt_out(req), req.config_dict[INBOUND]
    return await streamjson.reply(req, payload, fmt, status, text, inbound, lambda r: _limit_headers(r, CALLER.get()))


def error_reply(req: web.Request, err: Error, status: int | None = None) -> web.Response:
    return reply(req, {"error": err}, status or errors.http_status(err.code), errors.retry_after_header(err))


@web.middleware
async def errors_and_auth(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    guard = GUARDS.get(request.transport)
    if guard is not None:
        guard.busy()  # handled now: no header or idle deadline until the reply is out
    try:
        return await _handle(request, handler)
    finally:
        if guard is not None:
            guard.idle()


async def _handle(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    if request.path in ("/healthz", "/readyz") or pages.public(request.path) or self_auth(request):
        return await _served(request, handler)  # (a self-authenticating route checks its caller itself)
    headers = (h for app in request.match_info.apps for h in app.get(TOKEN_HEADERS, ()))
    creds = list(tenantauth.presented(request, headers))
    caller = tenantauth.identify(
        creds, request.app[TOKEN], request.config_dict[SVC].tenants, tenantauth.billed(request)
    )
    if caller is None:
        return error_reply(request, Error("unauthorized", "missing or wrong bearer token or API key"))
    if caller.tenant is not None and request.path == "/metrics":  # (every tenant's usage: the operator's)
        return error_reply(request, Error("forbidden", "/metrics: needs the bearer token, not a tenant's key"))
    bound = CALLER.set(caller)  # (reset: a keep-alive connection serves its requests in one task)
    try:
        resp = await _served(request, handler)
    finally:
        CALLER.reset(bound)
    if not resp.prepared:
        _limit_headers(resp, caller)
    return resp


def _limit_headers(resp: web.StreamResponse, caller: Caller | None) -> None:
    if caller is not None and caller.limit is not None:
        for k, v in caller.limit.headers().items():
            resp.headers.setdefault(k, v)  # (a Retry-After of the reply's own wins)


async def _served(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    try:
        return await with_body(request, handler)
    except ServiceError as e:
        return error_reply(request, e.err)
    except web.HTTPRequestEntityTooLarge:
        return error_reply(request, Error("bad_request", f"body: larger than {request.app[SVC_MAX_BODY]} bytes"), 413)
    except (web.HTTPNotFound, web.HTTPMethodNotAllowed) as e:
        return route_error(request, e)
    except web.HTTPException:
        raise
    except ConnectionResetError:
        # The client went away while sending its body: its mistake, not ours
        # (an upload cut short is an everyday event, not an internal error's
        # traceback in the log); the reply goes nowhere.
        log.debug("HTTP %s %s: the client went away while sending its body", request.method, request.path)
        return error_reply(request, Error("bad_request", "body: the connection closed before all of it came"))
    except Exception as e:
        log.exception("HTTP %s %s failed", request.method, request.path)
        return error_reply(request, Error("internal", f"internal error: {e}"))


def route_error(request: web.Request, e: web.HTTPNotFound | web.HTTPMethodNotAllowed) -> web.Response:
    """aiohttp's own 404 and 405 are text/plain: here they are JSON in the error shape of
    the API the path is under (a mounted API's, else the native one), 405 keeping its Allow."""
    allow = e.headers.get("Allow")
    headers = {"Allow": allow} if allow is not None else None
    what = "no such route" if e.status == 404 else f"method not allowed (Allow: {allow})"
    message = f"{what}: {request.method} {request.path}"
    for prefix, body in request.config_dict.get(ROUTE_ERRORS, ()):
        if not prefix or request.path == prefix or request.path.startswith(prefix + "/"):
            raw = msgspec.json.encode(body(e.status, message))
            return web.Response(body=raw, status=e.status, headers=headers, content_type="application/json")
    if e.status == 404:
        message += " (the API's routes: /openapi.json)"
    err = Error("not_found" if e.status == 404 else "bad_request", message)
    return reply(request, {"error": err}, e.status, headers)


SELF_AUTH = "self-auth:"  # route names of handlers that authenticate themselves (WebSocket sessions)


def self_auth(request: web.Request) -> bool:
    """A route that checks the token itself: a browser's WebSocket carries it in
    its first message, not a header (sandboxd.api.sessions)."""
    name = request.match_info.route.name
    return name is not None and name.startswith(SELF_AUTH)


async def with_body(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """The handler, once the body is in: read first, within http_body_timeout,
    the daemon-wide max_receiving_bytes and the memory budget (both reserved
    from Content-Length before a byte is read, max_body for a chunked body;
    the budget's with the body's copies, until its job is stored or the
    handler is done: sandboxd.bodyhold); handlers then get it from
    memory.  A body declared larger than max_body is left to the handler's own
    read, which refuses it in its API's format after max_body bytes, under the
    same deadline and reservation."""
    if not request.body_exists or request.match_info.handler in STREAMING:
        return await handler(request)
    inbound, max_body = request.app[INBOUND], request.app[SVC_MAX_BODY]
    declared = request.content_length
    cost = max_body if declared is None else min(declared, max_body)
    if not inbound.receiving.try_acquire(cost):
        why = (
            f"the daemon is receiving {inbound.receiving.used} bytes of request bodies "
            f"(max_receiving_bytes {inbound.max_receiving_bytes}): retry later"
        )
        return _unread(request, Error("queue_full", why, RETRY_AFTER), 503)
    try:
        hold = inbound.hold_body(cost, fmt_in(request) == "msgpack")
    except ServiceError as e:
        inbound.receiving.release(cost)
        return _unread(request, e.err)
    token = BODY.set(hold)  # (its job's admission takes its place: sandboxd.bodyhold)
    try:
        return await _read_then(request, handler, cost, declared is not None and declared > max_body)
    finally:
        BODY.reset(token)
        if hold is not None:
            hold.release()


def _unread(request: web.Request, err: Error, status: int | None = None) -> web.Response:
    resp = error_reply(request, err, status)
    resp.force_close()  # the body stays unread: the connection cannot carry another request
    guard = GUARDS.get(request.transport)
    if guard is not None:
        guard.discard()  # (and what more comes of it is dropped unparsed)
    return resp


async def _read_then(
    request: web.Request,
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
    cost: int,
    oversize: bool,
) -> web.StreamResponse:
    """The body read (max_receiving_bytes' `cost` given back once it is in),
    then the handler; an oversize body is the handler's to refuse."""
    inbound = request.app[INBOUND]
    try:
        async with asyncio.timeout(inbound.body_timeout):
            if oversize:
                return await handler(request)
            await receive(request)
    except TimeoutError:
        why = f"body: not received within http_body_timeout ({inbound.body_timeout} s)"
        return _unread(request, Error("bad_request", why), 408)
    finally:
        inbound.receiving.release(cost)
    return await handler(request)


def _wait_flag(request: web.Request) -> bool:
    v = request.query.get("wait", "true").lower()
    if v not in ("true", "false", "1", "0"):
        raise ServiceError(Error("bad_request", "wait: must be true or false"))
    return v in ("true", "1")


def idempotency_key(req: web.Request) -> str | None:
    """The Idempotency-Key header, checked (the Judge0 and Piston APIs take it too)."""
    return check_idempotency_key(req.headers.get("Idempotency-Key"), "Idempotency-Key header")


async def _post(req: web.Request, op: str) -> web.StreamResponse:
    wait = _wait_flag(req)
    text = textmode.wanted(req.query)  # (checked before the job starts)
    cb = req.query.get("callback_url")
    key = idempotency_key(req)
    # (result_only: a 200 with the result is this call's only answer; SSE, which sends
    # the job id first, is _post_events)
    res = await dispatch(
        req.app[SVC],
        op,
        await take_body(req),
        fmt_in(req),
        wait=wait,
        callback_url=cb,
        idempotency_key=key,
        result_only=True,
    )
    return await big_reply(req, res, 200 if wait else 202, text)


async def post_run(req: web.Request) -> web.StreamResponse:
    return await _post(req, "run")


async def post_submission(req: web.Request) -> web.StreamResponse:
    if sse.wanted(req):
        return await _post_events(req)
    return await _post(req, "submit")


async def _post_events(req: web.Request) -> web.StreamResponse:
    """A waited submission whose tests stream as they finish (sandboxd.api.sse)."""
    refused = sse.refusal(req.app[INBOUND])
    if refused is not None:
        return error_reply(req, refused, 503)
    cb = req.query.get("callback_url")
    key = idempotency_key(req)
    # take_body, as _post: the request and this closure do not keep the body while the
    # stream lasts (its job's reservation counts the decoded submission instead).
    body, fmt = [await take_body(req)], fmt_in(req)

    def start(progress: Callable[[TestResult], None], on_job: Callable[[str], None]) -> Awaitable[Any]:
        return dispatch(
            req.app[SVC],
            "submit",
            body.pop(),
            fmt,
            progress=progress,
            on_job=on_job,
            callback_url=cb,
            idempotency_key=key,
        )

    return await sse.stream(req, req.app[INBOUND], start)


async def get_job(req: web.Request) -> web.StreamResponse:
    ref = msgspec.json.encode({"job": req.match_info["job"]})
    text = textmode.wanted(req.query)
    timeout = req.query.get("wait")
    if timeout is None:
        return await big_reply(req, await dispatch(req.app[SVC], "get", ref, "json"), text=text)
    try:
        secs = min(float(timeout), 300.0)
    except ValueError:
        raise ServiceError(Error("bad_request", "wait: seconds to wait for the job, a number")) from None
    return await big_reply(req, await dispatch(req.app[SVC], "wait", ref, "json", timeout=secs), text=text)


async def delete_job(req: web.Request) -> web.Response:
    ref = msgspec.json.encode({"job": req.match_info["job"]})
    return reply(req, await dispatch(req.app[SVC], "cancel", ref, "json"))


async def status(req: web.Request) -> web.Response:
    return reply(req, {**await req.app[SVC].status_info(), "decode": DECODE.snapshot()})


async def dashboard(req: web.Request) -> web.Response:
    return reply(req, {**await req.app[SVC].dashboard_info(), "decode": DECODE.snapshot()})


async def languages(req: web.Request) -> web.Response:
    return reply(req, await req.app[SVC].language_list())


async def metrics(req: web.Request) -> web.Response:
    return web.Response(body=await req.app[SVC].metrics_text(), content_type="text/plain", charset="utf-8")


async def healthz(req: web.Request) -> web.Response:
    return web.json_response({"ok": True})


async def readyz(req: web.Request) -> web.Response:
    svc = req.app[SVC]
    ready = svc.ready()
    body: dict[str, object] = {"ready": ready}
    reason = getattr(svc, "unready_reason", None)  # a daemon says why; the coordinator has no such method
    if not ready and reason is not None:
        body["reason"] = reason()
    return web.json_response(body, status=200 if ready else 503)


async def put_file(req: web.Request) -> web.Response:
    return await files.put(req, req.app[SVC], req.app[INBOUND].body_timeout)


async def head_file(req: web.Request) -> web.Response:
    return await files.head(req, req.app[SVC])


async def get_file(req: web.Request) -> web.StreamResponse:
    return await files.get(req, req.app[SVC])


# Handlers that read their body themselves, as it comes (an upload goes to disk, not memory).
STREAMING: frozenset[object] = frozenset({put_file})


async def openapi(req: web.Request) -> web.Response:
    return web.json_response(document(req.app.get(MOUNTED, ())))


def make_app(
    svc: Frontend,
    token: str = "",
    max_body: int = HTTP.max_body,
    prefixes: Mapping[str, str] | None = None,
    extra_routes: Callable[[web.Application], None] | None = None,
    inbound: Inbound | None = None,
    cors_origins: Mapping[str, Sequence[str]] | None = None,
    api_options: Mapping[str, Mapping[str, Any]] | None = None,
) -> web.Application:
    """The main listener's app.  prefixes: registered API name -> where it is
    mounted ("" or absent: not on this listener).  cors_origins: API name ("" the
    native one) -> the origins its CORS policy allows (absent: the native one's).
    api_options: API name -> keyword arguments of its factory (its own settings)."""
    app = web.Application(middlewares=[errors_and_auth], client_max_size=max_body)
    app[SVC] = svc
    app[TOKEN] = token
    app[SVC_MAX_BODY] = max_body
    app[INBOUND] = inbound or default_inbound()
    app.router.add_post("/v1/runs", post_run)
    app.router.add_post("/v1/submissions", post_submission)
    app.router.add_get("/v1/jobs/{job}", get_job)
    app.router.add_delete("/v1/jobs/{job}", delete_job)
    app.router.add_get("/v1/status", status)
    app.router.add_get("/v1/dashboard", dashboard)
    app.router.add_get("/v1/languages", languages)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/openapi.json", openapi)
    tenantauth.install(app, svc.tenants, token)
    pages.add_routes(app)
    live = getattr(svc, "sessions", None)  # a host daemon's; a coordinator proxies in its extra_routes
    if isinstance(live, sessions.Sessions):
        add_sessions(app, live)
    app.router.add_put(files.ROUTE, put_file)
    app.router.add_route("HEAD", files.ROUTE, head_file)
    app.router.add_get(files.ROUTE, get_file, allow_head=False)
    if extra_routes is not None:
        extra_routes(app)
    # The registered APIs on the same Frontend: a host daemon runs their jobs
    # itself, a coordinator enqueues them as fleet jobs (sandboxd.compat).
    origins = cors_origins or {}
    mounted_at = [(name, prefix) for name, prefix in (prefixes or {}).items() if prefix]
    app[MOUNTED] = tuple(mounted_at)
    for name, prefix in mounted_at:
        app.add_subapp(prefix, _api(name, svc, (api_options or {}).get(name, {})))
    app[ROUTE_ERRORS] = tuple((p.rstrip("/"), _ROUTE_ERRORS[n]) for n, p in mounted_at if n in _ROUTE_ERRORS)
    native = origins.get("", ())
    by_prefix = [(prefix, _cors(name, origins.get(name, native))) for name, prefix in mounted_at]
    cors.install(app, cors.Policy.of(native), by_prefix)
    return app


def add_sessions(app: web.Application, live: sessions.Sessions) -> None:
    async def handler(req: web.Request) -> web.StreamResponse:
        budget = req.config_dict[INBOUND].budget  # (the session's frames are held from it)
        return await sessions.serve(req, live, req.app[TOKEN], req.config_dict[SVC].tenants, budget)

    app.router.add_get(sessions.PATH, handler, name=SELF_AUTH + "sessions")


def _cors(name: str, origins: Sequence[str]) -> cors.Policy:
    return cors.Policy.of(origins, _TOKEN_HEADERS.get(name, ()))


def _api(name: str, svc: Frontend, options: Mapping[str, Any], **app_args: Any) -> web.Application:
    """A registered API's app, told which headers carry its token."""
    app = _factory(name)(svc, **options, **app_args)
    app[TOKEN_HEADERS] = _TOKEN_HEADERS.get(name, ())
    return app


def _factory(name: str) -> MountFactory:
    factory = _MOUNTS.get(name)
    if factory is None:
        raise ValueError(f"HTTP API {name!r}: not registered (registered: {', '.join(_MOUNTS) or 'none'})")
    return factory


def make_api_app(
    svc: Frontend,
    api: str,
    token: str = "",
    max_body: int = HTTP.max_body,
    inbound: Inbound | None = None,
    cors_origins: Sequence[str] = (),
    options: Mapping[str, Any] | None = None,
) -> web.Application:
    """One registered API at the root of a listener of its own ([http]
    `judge0_listen`, `piston_listen`): the same bearer token and body limit as the main listener.
    options: keyword arguments of its factory (as make_app's api_options)."""
    app = _api(api, svc, options or {}, middlewares=[errors_and_auth], client_max_size=max_body)
    if api in _ROUTE_ERRORS:
        app[ROUTE_ERRORS] = (("", _ROUTE_ERRORS[api]),)  # (everything on this listener is the API's)
    cors.install(app, _cors(api, cors_origins))
    app[SVC] = svc  # (its callers' tenants: the auth middleware)
    app[TOKEN] = token
    app[SVC_MAX_BODY] = max_body
    app[INBOUND] = inbound or default_inbound()
    return app
