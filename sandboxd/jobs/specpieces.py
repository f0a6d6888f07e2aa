"""A spec's msgpack in pieces, its large bytes fields by reference (issue 13).

A run's 40 MiB stdin, decoded from a msgpack body, is a view of the body
(sandboxd.schema.RunRequest.stdin is a memoryview: msgspec decodes it without
a copy).  Encoding the spec for the job store would copy it again, 60-110 ms
with the GIL held, in whatever thread: the event loop stops as long.  So
each large top-level bytes field is swapped for a short random marker, the
small rest is encoded, and the marker's bin header is rewritten for the real
length: (head, field, middle, field, ..., tail) whose concatenation is
exactly the encoder's bytes of the whole spec (msgpack's bin header is its
shortest form, which msgspec always writes).  The pieces are written to the
store as they are (sandboxd.jobs.blobs.insert: chunk by chunk into a
zeroblob) and hashed as they are (hashlib releases the GIL), never joined;
so the stored row is the same as before and reads back the same way.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Sequence
from typing import Any

import msgspec

Piece = bytes | memoryview
SPLIT_FROM = 1 << 20  # bytes fields this large are not copied into the encoding
_MARK = 16  # a marker's length: c4 10 + 16 random bytes, found once or not used


def _bin_header(n: int) -> bytes:
    if n < 1 << 8:
        return b"\xc4" + struct.pack(">B", n)
    if n < 1 << 16:
        return b"\xc5" + struct.pack(">H", n)
    return b"\xc6" + struct.pack(">I", n)


def _large(spec: msgspec.Struct) -> dict[str, Piece]:
    out: dict[str, Piece] = {}
    for name in spec.__struct_fields__:
        v = getattr(spec, name)
        if isinstance(v, bytes | bytearray | memoryview) and len(v) >= SPLIT_FROM:
            out[name] = v if isinstance(v, bytes | memoryview) else memoryview(v)
    return out


def pieces(spec: msgspec.Struct, encode: Callable[[Any], bytes]) -> list[Piece]:
    """encode(spec) as pieces whose concatenation equals it; its large
    top-level bytes fields are pieces of their own, the caller's objects."""
    large = _large(spec)
    if not large:
        return [encode(spec)]
    marks = {name: os.urandom(_MARK) for name in large}
    small = encode(msgspec.structs.replace(spec, **marks))
    found = sorted((small.find(b"\xc4" + bytes([_MARK]) + m), name) for name, m in marks.items())
    if any(at < 0 or small.count(marks[name]) != 1 for at, name in found):
        return [encode(spec)]  # (a marker also elsewhere: never for random bytes, but then one copy)
    out: list[Piece] = []
    start = 0
    for at, name in found:
        data = large[name]
        out.append(small[start:at] + _bin_header(len(data)))
        out.append(data)
        start = at + 2 + _MARK
    out.append(small[start:])
    return out


def total(ps: Sequence[Piece]) -> int:
    return sum(len(p) for p in ps)
