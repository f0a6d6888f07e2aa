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
import hmac
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import msgspec
from aiohttp import web

from sandboxd import errors
from sandboxd.api import cors, replies, textmode
from sandboxd.api.bodies import Body
from sandboxd.api.decodepool import DECODE
from sandboxd.api.httpguard import GUARDS, RETRY_AFTER
from sandboxd.api.inbound import Inbound, offload, receive_buffer
from sandboxd.api.inbound import default as default_inbound
from sandboxd.api.openapi import document
from sandboxd.api.wire import Format, Frontend, check_idempotency_key, dispatch
from sandboxd.bodyhold import BODY
from sandboxd.config import HTTP
from sandboxd.errors import ServiceError, error
from sandboxd.schema import Error

log = logging.getLogger(__name__)

MSGPACK = ("application/msgpack", "application/x-msgpack", "application/vnd.msgpack")
SVC: web.AppKey[Frontend] = web.AppKey("service")
TOKEN: web.AppKey[str] = web.AppKey("token", str)
SVC_MAX_BODY: web.AppKey[int] = web.AppKey("max_body", int)
INBOUND: web.AppKey[Inbound] = web.AppKey("inbound", Inbound)

# An HTTP API on a Frontend: factory(frontend, **aiohttp.web.Application kwargs).
MountFactory = Callable[..., web.Application]
_MOUNTS: dict[str, MountFactory] = {}
# Headers that carry the bearer token's value as is, on an app (a plug-in's:
# Judge0's X-Auth-Token), besides `Authorization: Bearer`.
TOKEN_HEADERS: web.AppKey[tuple[str, ...]] = web.AppKey("token_headers", tuple)
_TOKEN_HEADERS: dict[str, tuple[str, ...]] = {}


def mount(name: str, factory: MountFactory, token_headers: tuple[str, ...] = ()) -> None:
    """Register an HTTP API (a plug-in's: "judge0", "piston") to serve on the same Frontend.
    token_headers: its own auth headers, accepted on its routes (and allowed by its CORS policy)."""
    known = _MOUNTS.get(name)
    if known is not None and known is not factory:
        raise ValueError(f"HTTP API {name!r} is registered already")
    _MOUNTS[name] = factory
    _TOKEN_HEADERS[name] = token_headers


def mounted() -> list[str]:
    return list(_MOUNTS)


def _fmt_in(req: web.Request) -> Format:
    return "msgpack" if req.content_type in MSGPACK else "json"


def _fmt_out(req: web.Request) -> Format:
    accept = req.headers.get("Accept", "")
    if any(m in accept for m in MSGPACK):
        return "msgpack"
    if "application/json" in accept:
        return "json"
    return _fmt_in(req) if req.body_exists else "json"


def _encode(fmt: Format, payload: Any) -> tuple[bytes, str]:
    if fmt == "msgpack":
        return msgspec.msgpack.encode(payload), MSGPACK[0]
    return msgspec.json.encode(payload), "application/json"


def reply(req: web.Request, payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    body, ctype = _encode(_fmt_out(req), payload)
    return web.Response(body=body, status=status, content_type=ctype, headers=headers)


async def big_reply(req: web.Request, payload: Any, status: int = 200, text: bool = False) -> web.Response:
    """reply(), encoded off the event loop when the result is large (a run's
    files out in base64 JSON: 24 MiB took the loop for a second; sandboxd.api.replies).
    text: JSON's text mode, as the request asked (sandboxd.api.textmode)."""
    fmt = _fmt_out(req)
    body = await offload(replies.payload_bytes(payload), replies.encode, fmt, payload, text)
    return web.Response(body=body, status=status, content_type=MSGPACK[0] if fmt == "msgpack" else "application/json")


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
    token = request.app[TOKEN]
    if token and request.path not in ("/healthz", "/readyz") and not authorized(request, token):
        return error_reply(request, Error("unauthorized", "missing or wrong bearer token"))
    try:
        return await with_body(request, handler)
    except ServiceError as e:
        return error_reply(request, e.err)
    except web.HTTPRequestEntityTooLarge:
        return error_reply(request, Error("bad_request", f"body: larger than {request.app[SVC_MAX_BODY]} bytes"), 413)
    except web.HTTPException:
        raise
    except Exception as e:
        log.exception("HTTP %s %s failed", request.method, request.path)
        return error_reply(request, Error("internal", f"internal error: {e}"))


def authorized(request: web.Request, token: str) -> bool:
    """The bearer token, or (on a plug-in's routes) one of its own headers carrying it."""
    want = token.encode()
    if hmac.compare_digest(request.headers.get("Authorization", "").encode(), b"Bearer " + want):
        return True
    headers = (h for app in request.match_info.apps for h in app.get(TOKEN_HEADERS, ()))
    return any(hmac.compare_digest(request.headers.get(h, "").encode(), want) for h in headers)


async def with_body(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """The handler, once the body is in: read first, within http_body_timeout,
    the daemon-wide max_receiving_bytes and the memory budget (both reserved
    from Content-Length before a byte is read, max_body for a chunked body;
    the budget's until the handler is done); handlers then get it from
    memory.  A body declared larger than max_body is left to the handler's own
    read, which refuses it in its API's format after max_body bytes, under the
    same deadline and reservation."""
    if not request.body_exists:
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
        hold = inbound.hold_body(cost)
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


# (Forms are received into a bytearray: their parser, aiohttp's request.post(), wants bytes' methods.)
FORMS = ("application/x-www-form-urlencoded", "multipart/form-data")


async def receive(request: web.Request) -> None:
    """The body, into one buffer of its declared size, a chunk at a time as it
    arrives; handlers then get that buffer from `request.read()`.

    aiohttp's own read() raises the stream's buffer to client_max_size (so one
    chunk can be tens of MiB, joined and copied on the event loop at once),
    grows a bytearray and copies it whole into bytes at the end: with 64 MiB
    bodies, stalls of the loop (and /healthz) of hundreds of ms.  Here every
    copy is of one chunk as the transport buffered it (the stream's default
    limit: about 128 KiB), into a buffer allocated once and handed over as it
    is (every decoder takes a buffer; a large one is an anonymous mapping:
    sandboxd.api.inbound.receive_buffer).  A body without Content-Length
    (chunked) or compressed is read by aiohttp as before."""
    n = request.content_length
    if n is None or request.headers.get("Content-Encoding", "identity").lower() != "identity":
        await request.read()  # (a compressed body's length is not its declared one; read() caps it at max_body)
        return
    buf = receive_buffer(n, request.content_type not in FORMS)
    view, got, content = memoryview(buf), 0, request.content
    while got < n:
        chunk = await content.readany()
        if not chunk or got + len(chunk) > n:
            raise error("bad_request", f"body: {got + len(chunk)} bytes where Content-Length said {n}")
        view[got : got + len(chunk)] = chunk
        got += len(chunk)
    view.release()  # (the mapping is unmapped when the last reference to it goes)
    # (read() returns what it has read before: aiohttp 3.x keeps it here.)
    request._read_bytes = buf  # type: ignore[assignment]


async def take_body(request: web.Request) -> Body:
    """The body, no longer kept by the request: once decoded it is gone, not
    held (uncounted: its job's reservation took its place) while the job runs
    and its sender waits."""
    body = await request.read()
    request._read_bytes = None  # (a later read() would find the stream at its end: b"")
    return body


def _wait_flag(request: web.Request) -> bool:
    v = request.query.get("wait", "true").lower()
    if v not in ("true", "false", "1", "0"):
        raise ServiceError(Error("bad_request", "wait: must be true or false"))
    return v in ("true", "1")


def idempotency_key(req: web.Request) -> str | None:
    """The Idempotency-Key header, checked (the Judge0 and Piston APIs take it too)."""
    return check_idempotency_key(req.headers.get("Idempotency-Key"), "Idempotency-Key header")


async def _post(req: web.Request, op: str) -> web.Response:
    wait = _wait_flag(req)
    text = textmode.wanted(req.query)  # (checked before the job starts)
    cb = req.query.get("callback_url")
    key = idempotency_key(req)
    res = await dispatch(
        req.app[SVC], op, await take_body(req), _fmt_in(req), wait=wait, callback_url=cb, idempotency_key=key
    )
    return await big_reply(req, res, 200 if wait else 202, text)


async def post_run(req: web.Request) -> web.Response:
    return await _post(req, "run")


async def post_submission(req: web.Request) -> web.Response:
    return await _post(req, "submit")


async def get_job(req: web.Request) -> web.Response:
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


async def openapi(req: web.Request) -> web.Response:
    return web.json_response(document())


def make_app(
    svc: Frontend,
    token: str = "",
    max_body: int = HTTP.max_body,
    prefixes: Mapping[str, str] | None = None,
    extra_routes: Callable[[web.Application], None] | None = None,
    inbound: Inbound | None = None,
    cors_origins: Mapping[str, Sequence[str]] | None = None,
) -> web.Application:
    """The main listener's app.  prefixes: registered API name -> where it is
    mounted ("" or absent: not on this listener).  cors_origins: API name ("" the
    native one) -> the origins its CORS policy allows (absent: the native one's)."""
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
    app.router.add_get("/v1/languages", languages)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/openapi.json", openapi)
    if extra_routes is not None:
        extra_routes(app)
    # The registered APIs on the same Frontend: a host daemon runs their jobs
    # itself, a coordinator enqueues them as fleet jobs (sandboxd.compat).
    origins = cors_origins or {}
    mounted_at = [(name, prefix) for name, prefix in (prefixes or {}).items() if prefix]
    for name, prefix in mounted_at:
        app.add_subapp(prefix, _api(name, svc))
    native = origins.get("", ())
    by_prefix = [(prefix, _cors(name, origins.get(name, native))) for name, prefix in mounted_at]
    cors.install(app, cors.Policy.of(native), by_prefix)
    return app


def _cors(name: str, origins: Sequence[str]) -> cors.Policy:
    return cors.Policy.of(origins, _TOKEN_HEADERS.get(name, ()))


def _api(name: str, svc: Frontend, **app_args: Any) -> web.Application:
    """A registered API's app, told which headers carry its token."""
    app = _factory(name)(svc, **app_args)
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
) -> web.Application:
    """One registered API at the root of a listener of its own ([http]
    `judge0_listen`, `piston_listen`): the same bearer token and body limit as the main listener."""
    app = _api(api, svc, middlewares=[errors_and_auth], client_max_size=max_body)
    cors.install(app, _cors(api, cors_origins))
    app[TOKEN] = token
    app[SVC_MAX_BODY] = max_body
    app[INBOUND] = inbound or default_inbound()
    return app
