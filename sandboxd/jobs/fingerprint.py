"""What makes two requests "the same" for an idempotency key, declared once:
a daemon (sandboxd.jobs.table, stored in its job store) and a fleet coordinator
(sandboxd.fleet.coordinator, stored in Redis) bind a key to this."""

from __future__ import annotations

import functools
import hashlib
from typing import Any

import msgspec

from sandboxd.jobs.specpieces import Piece, pieces

Op = str  # what a job runs: its kind's stored name (sandboxd.jobs.kinds: "run", "submit", "compat")
Spec = msgspec.Struct  # any registered kind's spec

# Sorted: the same request always encodes the same way (a dict's keys in any
# order, JSON or msgpack on the wire: the decoded struct is what is encoded).
_canon = msgspec.msgpack.Encoder(order="sorted")


def fingerprint(op: Op, spec: Spec, callback_url: str | None) -> bytes:
    return fingerprint_of(op, canonical(spec), callback_url)


def canonical(spec: Spec) -> bytes:
    """The spec's canonical msgpack: what its fingerprint hashes, and a stored
    spec that decodes to the same request (a map's keys in any order decode
    alike), so a keyed job's spec is encoded once."""
    return _canon.encode(_defaults_as_omitted(spec))


def canonical_pieces(spec: Spec) -> list[Piece]:
    """canonical(spec) in pieces, its large bytes fields not copied (sandboxd.jobs.specpieces)."""
    return pieces(_defaults_as_omitted(spec), _canon.encode)


def fingerprint_of(op: Op, canon: bytes | list[Piece], callback_url: str | None) -> bytes:
    """fingerprint() of a spec whose canonical() bytes are `canon` (or its
    canonical_pieces): the hash of [spec, callback_url] as one msgpack array
    (0x92: a fixarray of two), fed in pieces (hashlib releases the GIL over a
    large buffer, and nothing is concatenated)."""
    h = hashlib.sha256(op.encode() + b"\0\x92")
    for piece in [canon] if isinstance(canon, bytes) else canon:
        h.update(piece)
    h.update(_canon.encode(callback_url))
    return h.digest()


def _defaults_as_omitted(value: Any) -> Any:
    """`value` with every field equal to its default replaced by the default
    object itself.  msgspec's omit_defaults drops a str/float/large-int field
    only when it *is* the default object, so a request that spells a default
    out (`"cwd": "/box"`) would otherwise encode, and fingerprint, differently
    from the same request without it.  Requests that spell nothing out encode
    exactly as before, so fingerprints already stored stay valid.  (On every
    keyed request: a scalar field is compared in place, and a struct or list
    is copied only if something in it changes.)"""
    if isinstance(value, list):
        for v in value:
            if isinstance(v, _NESTED):
                break
        else:
            return value  # (strings, numbers: nothing in it to change, no copy to compare)
        out = [_defaults_as_omitted(v) if isinstance(v, _NESTED) else v for v in value]
        return value if all(w is v for w, v in zip(out, value, strict=True)) else out
    if not isinstance(value, msgspec.Struct):
        return value
    changes: dict[str, Any] = {}
    for name, default in _defaults(type(value)):
        v = getattr(value, name)
        w = _defaults_as_omitted(v) if isinstance(v, _NESTED) else v
        if w is not default and default is not msgspec.NODEFAULT and type(w) is type(default) and w == default:
            w = default
        if w is not v:
            changes[name] = w
    return msgspec.structs.replace(value, **changes) if changes else value


_NESTED = (list, msgspec.Struct)


@functools.cache
def _defaults(cls: type[msgspec.Struct]) -> tuple[tuple[str, Any], ...]:
    """msgspec.structs.fields resolves the class's annotations (typing's
    ForwardRef evaluation) on every call: about 0.4 ms per request, most of a
    socket round trip's daemon CPU (py-spy, issue 18).  A struct's fields never
    change, and the kinds are a handful of classes, so once per class."""
    return tuple((f.name, f.default) for f in msgspec.structs.fields(cls))
