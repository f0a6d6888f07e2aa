"""Which format an HTTP request's body is in, and which its reply is wanted in."""

from __future__ import annotations

from typing import Any

import msgspec
from aiohttp import web

from sandboxd.api.wire import Format

MSGPACK = ("application/msgpack", "application/x-msgpack", "application/vnd.msgpack")


def fmt_in(req: web.Request) -> Format:
    return "msgpack" if req.content_type in MSGPACK else "json"


def fmt_out(req: web.Request) -> Format:
    accept = req.headers.get("Accept", "")
    if any(m in accept for m in MSGPACK):
        return "msgpack"
    if "application/json" in accept:
        return "json"
    return fmt_in(req) if req.body_exists else "json"


def encode(fmt: Format, payload: Any) -> tuple[bytes, str]:
    """The reply's body and its Content-Type."""
    if fmt == "msgpack":
        return msgspec.msgpack.encode(payload), MSGPACK[0]
    return msgspec.json.encode(payload), "application/json"
