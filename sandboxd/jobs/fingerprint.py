"""What makes two requests "the same" for an idempotency key, declared once:
a daemon (sandboxd.jobs.table, stored in its job store) and a fleet coordinator
(sandboxd.fleet.coordinator, stored in Redis) bind a key to this."""

from __future__ import annotations

import functools
import hashlib
from typing import Any

import msgspec

Op = str  # what a job runs: its kind's stored name (sandboxd.jobs.kinds: "run", "submit", "compat")
Spec = msgspec.Struct  # any registered kind's spec

# Sorted: the same request always encodes the same way (a dict's keys in any
# order, JSON or msgpack on the wire: the decoded struct is what is encoded).
_canon = msgspec.msgpack.Encoder(order="sorted")


def fingerprint(op: Op, spec: Spec, callback_url: str | None) -> bytes:
    return hashlib.sha256(op.encode() + b"\0" + _canon.encode([_defaults_as_omitted(spec), callback_url])).digest()


def _defaults_as_omitted(value: Any) -> Any:
    """`value` with every field equal to its default replaced by the default
    object itself.  msgspec's omit_defaults drops a str/float/large-int field
    only when it *is* the default object, so a request that spells a default
    out (`"cwd": "/box"`) would otherwise encode, and fingerprint, differently
    from the same request without it.  Requests that spell nothing out encode
    exactly as before, so fingerprints already stored stay valid."""
    if isinstance(value, list):
        return [_defaults_as_omitted(v) for v in value]
    if not isinstance(value, msgspec.Struct):
        return value
    changes: dict[str, Any] = {}
    for f in _fields(type(value)):
        v = getattr(value, f.name)
        w = _defaults_as_omitted(v)
        if f.default is not msgspec.NODEFAULT and type(w) is type(f.default) and w == f.default:
            w = f.default
        if w is not v:
            changes[f.name] = w
    return msgspec.structs.replace(value, **changes) if changes else value


@functools.cache
def _fields(cls: type[msgspec.Struct]) -> tuple[msgspec.structs.FieldInfo, ...]:
    """msgspec.structs.fields resolves the class's annotations (typing's
    ForwardRef evaluation) on every call: about 0.4 ms per request, most of a
    socket round trip's daemon CPU (py-spy, issue 18).  A struct's fields never
    change, and the kinds are a handful of classes, so once per class."""
    return msgspec.structs.fields(cls)
