"""A result's HTTP reply, encoded off the event loop and held in the memory
budget until written; a large JSON one written as it is encoded, its bytes'
base64 a chunk at a time.

replies.encode builds the whole document: a run's 64 MiB of files out became
85 MiB of base64 in chunks, then joined, then copied into the JSON, 3.7x the
result held at once.  Here the document is encoded with each large bytes
field replaced by its number between NUL bytes, which JSON text never holds
(msgspec escapes control characters in strings), split there, and written piece by piece:
the segments between the fields as they are, each field's base64 a chunk
(replies.B64_CHUNK) at a time on the event loop, each write waiting for the
socket to drain.  Held beyond the result:
the segments (its small fields) and one chunk.  A msgpack reply (its bytes
as they are) and JSON's text mode are encoded whole (sandboxd.api.replies).
"""

from __future__ import annotations

import asyncio
import binascii
from collections.abc import Callable, Iterator
from typing import Any

import msgspec
from aiohttp import web

from sandboxd.api import replies
from sandboxd.api.bodies import Format
from sandboxd.api.inbound import Inbound, offload


def split(payload: Any) -> tuple[list[bytes], list[bytes]]:
    """(the document's segments around its large fields, those fields' bytes): n + 1 and n."""
    marked: list[bytes] = []

    def mark(data: bytes) -> Any:
        if len(data) <= replies.LARGE:
            return data
        marked.append(data)
        return msgspec.Raw(b"\x00%d\x00" % (len(marked) - 1))  # (numbered: marked in another order than written)

    parts = msgspec.json.encode(replies.prepared(payload, mark)).split(b"\x00")
    assert len(parts) == 2 * len(marked) + 1
    return parts[0::2], [marked[int(i)] for i in parts[1::2]]


def length(segments: list[bytes], fields: list[bytes]) -> int:
    return sum(len(s) for s in segments) + sum(2 + 4 * ((len(f) + 2) // 3) for f in fields)


async def write(
    req: web.Request, parts: tuple[list[bytes], list[bytes]], status: int, before: Callable[[web.StreamResponse], None]
) -> web.StreamResponse:
    """The reply of `parts` (split()); before(resp): its headers' last word, before they go."""
    segments, fields = parts
    resp = web.StreamResponse(status=status)
    resp.content_type = "application/json"
    resp.content_length = length(segments, fields)
    before(resp)
    await resp.prepare(req)
    try:
        for piece in pieces(segments, fields):
            await resp.write(piece)  # (waits for the socket to drain when it is full)
            # A client reading as fast as we write never fills the socket, and
            # then write() does not yield: 85 MiB of base64 took the loop for
            # 580 ms in one go.  One piece per slice of the loop instead.
            await asyncio.sleep(0)
        await resp.write_eof()
    except ConnectionError:  # (its client has gone: nothing more to tell it)
        pass
    return resp


def pieces(segments: list[bytes], fields: list[bytes]) -> Iterator[bytes]:
    """The document, made as it is written: each field's base64 a chunk at a time."""
    for i, data in enumerate(fields):
        yield segments[i] + b'"'
        view, step = memoryview(data), replies.B64_CHUNK  # (a slice of the loop each: small)
        for at in range(0, len(view), step):
            yield binascii.b2a_base64(view[at : at + step], newline=False)
        yield b'"'
    yield segments[-1]


async def reply(
    req: web.Request,
    payload: Any,
    fmt: Format,
    status: int,
    text: bool,
    inbound: Inbound,
    before: Callable[[web.StreamResponse], None],
) -> web.StreamResponse:
    """The reply of a result (before(resp): as in write), encoded off the event
    loop when large (a run's files out in base64 JSON: 24 MiB took the loop
    for a second) and held in the memory budget until written."""
    n = replies.payload_bytes(payload)
    stream = fmt == "json" and not text and n > replies.LARGE
    how: replies.Encoding = "stream" if stream else "msgpack" if fmt == "msgpack" else "json"
    hold = inbound.hold_reply(n, how)  # (until written: here, or replies.HeldResponse)
    if stream:
        try:
            return await write(req, await offload(n, split, payload), status, before)
        finally:
            if hold is not None:
                hold.release()
    try:
        body = await offload(n, replies.encode, fmt, payload, text)
    except BaseException:
        if hold is not None:
            hold.release()
        raise
    return replies.response(body, status, "application/msgpack" if fmt == "msgpack" else "application/json", hold)
