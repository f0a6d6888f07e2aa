"""HTTP API (aiohttp): the same operations as the Unix socket, JSON or msgpack bodies.

Request body format follows Content-Type (application/json, application/msgpack
or application/x-msgpack); the reply uses Accept, else the request's format.
In JSON, bytes fields (stdin, source, stdout...) are base64 strings.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from aiohttp import web

from .compat import judge0, piston
from .errors import ServiceError
from .openapi import document
from .schema import Error
from .wire import Format, Frontend, check_idempotency_key, dispatch

log = logging.getLogger(__name__)

STATUS = {
    "bad_request": 400,
    "unauthorized": 401,
    "not_found": 404,
    "queue_full": 429,
    "cancelled": 409,
    "conflict": 422,
    "internal": 500,
    "draining": 503,
    "queue_deadline": 504,
}
MSGPACK = ("application/msgpack", "application/x-msgpack", "application/vnd.msgpack")
SVC: web.AppKey[Frontend] = web.AppKey("service")
TOKEN: web.AppKey[str] = web.AppKey("token", str)
SVC_MAX_BODY: web.AppKey[int] = web.AppKey("max_body", int)


def _fmt_in(req: web.Request) -> Format:
    return "msgpack" if req.content_type in MSGPACK else "json"


def _fmt_out(req: web.Request) -> Format:
    accept = req.headers.get("Accept", "")
    if any(m in accept for m in MSGPACK):
        return "msgpack"
    if "application/json" in accept:
        return "json"
    return _fmt_in(req) if req.body_exists else "json"


def reply(req: web.Request, payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    if _fmt_out(req) == "msgpack":
        body, ctype = msgspec.msgpack.encode(payload), MSGPACK[0]
    else:
        body, ctype = msgspec.json.encode(payload), "application/json"
    return web.Response(body=body, status=status, content_type=ctype, headers=headers)


def error_reply(req: web.Request, err: Error, status: int | None = None) -> web.Response:
    headers = {"Retry-After": str(max(1, round(err.retry_after)))} if err.retry_after else None
    return reply(req, {"error": err}, status or STATUS.get(err.code, 500), headers)


@web.middleware
async def errors_and_auth(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    token = request.app[TOKEN]
    if token and request.path not in ("/healthz", "/readyz"):
        got = request.headers.get("Authorization", "")
        if not hmac.compare_digest(got.encode(), f"Bearer {token}".encode()):
            return error_reply(request, Error("unauthorized", "missing or wrong bearer token"))
    try:
        return await handler(request)
    except ServiceError as e:
        return error_reply(request, e.err)
    except web.HTTPRequestEntityTooLarge:
        return error_reply(request, Error("bad_request", f"body: larger than {request.app[SVC_MAX_BODY]} bytes"), 413)
    except web.HTTPException:
        raise
    except Exception as e:
        log.exception("HTTP %s %s failed", request.method, request.path)
        return error_reply(request, Error("internal", f"internal error: {e}"))


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
    cb = req.query.get("callback_url")
    key = idempotency_key(req)
    res = await dispatch(
        req.app[SVC], op, await req.read(), _fmt_in(req), wait=wait, callback_url=cb, idempotency_key=key
    )
    return reply(req, res, 200 if wait else 202)


async def post_run(req: web.Request) -> web.Response:
    return await _post(req, "run")


async def post_submission(req: web.Request) -> web.Response:
    return await _post(req, "submit")


async def get_job(req: web.Request) -> web.Response:
    ref = msgspec.json.encode({"job": req.match_info["job"]})
    timeout = req.query.get("wait")
    if timeout is None:
        return reply(req, await dispatch(req.app[SVC], "get", ref, "json"))
    try:
        secs = min(float(timeout), 300.0)
    except ValueError:
        raise ServiceError(Error("bad_request", "wait: seconds to wait for the job, a number")) from None
    return reply(req, await dispatch(req.app[SVC], "wait", ref, "json", timeout=secs))


async def delete_job(req: web.Request) -> web.Response:
    ref = msgspec.json.encode({"job": req.match_info["job"]})
    return reply(req, await dispatch(req.app[SVC], "cancel", ref, "json"))


async def status(req: web.Request) -> web.Response:
    return reply(req, await req.app[SVC].status_info())


async def languages(req: web.Request) -> web.Response:
    return reply(req, await req.app[SVC].language_list())


async def metrics(req: web.Request) -> web.Response:
    return web.Response(body=await req.app[SVC].metrics_text(), content_type="text/plain", charset="utf-8")


async def healthz(req: web.Request) -> web.Response:
    return web.json_response({"ok": True})


async def readyz(req: web.Request) -> web.Response:
    ready = req.app[SVC].ready()
    return web.json_response({"ready": ready}, status=200 if ready else 503)


async def openapi(req: web.Request) -> web.Response:
    return web.json_response(document())


def make_app(
    svc: Frontend,
    token: str = "",
    max_body: int = 64 << 20,
    judge0_prefix: str = "",
    piston_prefix: str = "",
    extra_routes: Callable[[web.Application], None] | None = None,
) -> web.Application:
    app = web.Application(middlewares=[errors_and_auth], client_max_size=max_body)
    app[SVC] = svc
    app[TOKEN] = token
    app[SVC_MAX_BODY] = max_body
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
    # Judge0 and Piston on the same Frontend: a host daemon runs their jobs
    # itself, a coordinator enqueues them as fleet jobs (sandboxd.compat).
    for prefix, compat_app in ((judge0_prefix, judge0.make_app), (piston_prefix, piston.make_app)):
        if prefix:
            app.add_subapp(prefix, compat_app(svc))
    return app


def make_compat_app(svc: Frontend, api: str, token: str = "", max_body: int = 64 << 20) -> web.Application:
    """One compatibility API at the root of a listener of its own (`judge0_http`,
    `piston_http`): the same bearer token and body limit as the main listener."""
    make = judge0.make_app if api == "judge0" else piston.make_app
    app = make(svc, middlewares=[errors_and_auth], client_max_size=max_body)
    app[TOKEN] = token
    app[SVC_MAX_BODY] = max_body
    return app
