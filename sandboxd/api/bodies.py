"""Request bodies into schema types, the same on every transport.

- `decode`: bytes (JSON or msgpack) into a schema type, every failure a
  `bad_request` naming the field (the same message on every transport).
- (sandboxd.api.inbound.decode_body: the same from the event loop, by size:
  small bodies inline; large msgpack bodies on the offload threads (msgpack's
  bytes are a copy, short); large JSON bodies parsed in a decode worker
  process (sandboxd.api.decodepool), which hands back msgpack: parsing 60 MB
  of JSON and base64 holds the GIL for 130-400 ms, which in a thread of the
  daemon would stall its event loop (and /healthz) as long.)
"""

from __future__ import annotations

import mmap
import sys
from typing import Any, Literal, TypeVar

import msgspec

from sandboxd.errors import error

Format = Literal["json", "msgpack"]
# A body as the transports hand it over: received into one buffer, never copied
# into bytes (sandboxd.api.inbound.receive_buffer); every decoder takes a buffer.
Body = bytes | bytearray | memoryview | mmap.mmap
T = TypeVar("T")

_json_dec: dict[type, msgspec.json.Decoder[Any]] = {}
_mp_dec: dict[type, msgspec.msgpack.Decoder[Any]] = {}


def decode(data: Body, typ: type[T], fmt: Format, what: str = "body") -> T:
    if not data:
        raise error("bad_request", f"{what}: missing")
    try:
        if fmt == "json":
            jd = _json_dec.get(typ) or _json_dec.setdefault(typ, msgspec.json.Decoder(typ))
            return jd.decode(data)  # type: ignore[no-any-return]
        md = _mp_dec.get(typ) or _mp_dec.setdefault(typ, msgspec.msgpack.Decoder(typ))
        return md.decode(data)  # type: ignore[no-any-return]
    except msgspec.ValidationError as e:
        raise error("bad_request", f"{what}: {e}".replace("`$", f"`{what}")) from None
    except (msgspec.DecodeError, UnicodeDecodeError) as e:
        # (msgspec reports invalid UTF-8 in a msgpack str as UnicodeDecodeError.)
        raise error("bad_request", f"{what}: malformed {fmt}: {e}") from None
    except RecursionError:
        raise error("bad_request", f"{what}: nested deeper than {sys.getrecursionlimit()} levels") from None
