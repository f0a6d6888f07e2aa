"""The Judge0 API's HTTP plumbing: its error bodies, Rails' params, the query's
`fields` and `base64_encoded`, and the app key of the API object."""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from aiohttp import web

from sandboxd.compat.jsonbody import json_body
from sandboxd.compat.judge0.api import Judge0
from sandboxd.compat.judge0.tables import ATTRIBUTES, DEFAULT_FIELDS
from sandboxd.errors import TENANT_STATUS, ServiceError

J0: web.AppKey[Judge0] = web.AppKey("judge0", Judge0)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class J0Error(Exception):
    """An HTTP answer other than success: status and JSON body (None: empty body)."""

    def __init__(self, status: int, body: Any = None) -> None:
        super().__init__(status)
        self.status, self.body = status, body


def reply(body: Any, status: int = 200) -> web.Response:
    if body is None:
        return web.Response(status=status)
    return web.Response(body=msgspec.json.encode(body), status=status, content_type="application/json")


def route_error(status: int, message: str) -> dict[str, str]:
    """A route Judge0 lacks or a method it does not take: its `{"error": ...}` body.
    (Rails answers both 404 with an HTML page; JSON is what its clients parse.)"""
    return {"error": message}


def handler(fn: Handler) -> Handler:
    async def wrapped(req: web.Request) -> web.StreamResponse:
        try:
            return await fn(req)
        except J0Error as e:
            return reply(e.body, e.status)
        except ServiceError as e:
            status = {"draining": 503, "queue_full": 503, "conflict": 422, **TENANT_STATUS}.get(e.err.code, 400)
            return reply({"error": e.err.message}, status)

    return wrapped


def b64(req: web.Request) -> bool:
    return req.query.get("base64_encoded") == "true"  # v1.13.1: only the string "true"


def fields(req: web.Request) -> tuple[str, ...]:
    raw = req.query.get("fields", "")
    names = [f.strip() for f in raw.split(",") if f.strip()]
    if not names:
        return DEFAULT_FIELDS
    if "*" in names:
        return ATTRIBUTES
    bad = [f for f in names if f not in ATTRIBUTES]
    if bad:
        raise J0Error(400, {"error": f"invalid fields: [{', '.join(bad)}]"})
    return tuple(names)


async def params(req: web.Request) -> dict[str, Any]:
    """Rails' params: query parameters, overridden by a JSON (or form) body.
    (The body is not kept by the request once decoded: sandboxd.compat.jsonbody.)"""
    out: dict[str, Any] = dict(req.query)
    try:
        if req.content_type == "application/x-www-form-urlencoded":
            out.update((await req.post()).items())
            return out
        data = await json_body(req, _EMPTY)
    except web.HTTPRequestEntityTooLarge:
        raise J0Error(413, {"error": f"request body larger than {req.client_max_size} bytes"}) from None
    # (ValidationError: a number out of range; UnicodeDecodeError: a string that is not UTF-8)
    except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError) as e:
        raise J0Error(400, {"error": f"invalid JSON body: {e}"}) from None
    except RecursionError:
        depth = sys.getrecursionlimit()
        raise J0Error(400, {"error": f"invalid JSON body: nested deeper than {depth} levels"}) from None
    if data is _EMPTY:
        return out
    if not isinstance(data, dict):
        raise J0Error(400, {"error": "the body must be a JSON object"})
    out.update(data)
    return out


_EMPTY = object()  # (no body: the query's params alone)
