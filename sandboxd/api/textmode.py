"""Text mode for JSON results: output as UTF-8 strings where it is UTF-8.

By default a JSON reply carries every bytes field (stdout, stderr, a file's
content, a test's preview) as base64, which a browser page must decode
before showing anything.  With `?text=1` on the request, each such field is
the string itself when its bytes are valid UTF-8, else still base64, and
next to it `<field>_encoding` says which ("utf-8" or "base64").  The marker
is there for every bytes field, so a client never guesses, and a client can
tell a daemon that ignored the parameter (no markers) from one that did not.
msgpack replies are unchanged: they carry bytes as bytes.

Large strings are encoded in chunks, like base64 in sandboxd.api.replies, so
one msgspec call does not hold the GIL over 64 MiB.
"""

from __future__ import annotations

from typing import Any

import msgspec

from sandboxd.errors import ServiceError
from sandboxd.schema import Error

PARAM = "text"
LARGE = 1 << 20  # strings above this are pre-encoded in chunks
_CHUNK = 1 << 20  # characters per msgspec call


def wanted(query: Any) -> bool:
    """Whether the request asks for text mode (`?text=1` / `true`); 400 for another value."""
    v = query.get(PARAM)
    if v is None:
        return False
    v = v.lower()
    if v not in ("1", "true", "0", "false", ""):
        raise ServiceError(Error("bad_request", f"{PARAM}: must be 1 (UTF-8 strings where valid) or 0 (base64)"))
    return v in ("1", "true")


def _string(s: str) -> Any:
    if len(s) <= LARGE:
        return s
    enc = msgspec.json.encode
    return msgspec.Raw(b'"' + b"".join(enc(s[i : i + _CHUNK])[1:-1] for i in range(0, len(s), _CHUNK)) + b'"')


def field(data: bytes, large_b64: Any) -> tuple[Any, str]:
    """(value, encoding) of one bytes field.  large_b64: how a value that stays base64 is encoded."""
    try:
        return _string(data.decode("utf-8")), "utf-8"
    except UnicodeDecodeError:
        return large_b64(data), "base64"


def tree(payload: Any, large_b64: Any) -> Any:
    """The payload as JSON-ready builtins with its bytes fields in text mode."""
    return _walk(msgspec.to_builtins(payload, builtin_types=(bytes,)), large_b64)


def _walk(x: Any, large_b64: Any) -> Any:
    if isinstance(x, dict):
        out: dict[str, Any] = {}
        for k, v in x.items():
            if isinstance(v, bytes):
                out[k], out[f"{k}_encoding"] = field(v, large_b64)
            else:
                out[k] = _walk(v, large_b64)
        return out
    if isinstance(x, list):
        return [_walk(v, large_b64) for v in x]
    return x
