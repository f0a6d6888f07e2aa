"""Encoding large results (HTTP replies) without holding the event loop.

A run's files out and output travel in the result: 64 MiB of files is ~86 MiB
of base64 in JSON, and one msgspec.json.encode call over it held the GIL for
hundreds of milliseconds even on a worker thread.  `encode` (run on the
offload pool, sandboxd.api.inbound) base64-encodes each large bytes field in
B64_CHUNK C calls first, so the event loop gets the GIL between them, and
hands msgspec the result as msgspec.Raw to copy.

A large reply is counted in the daemon's memory budget (holder "results",
sandboxd.api.inbound.Inbound.hold_reply) from its encoding until it is
written (`HeldResponse`): the result it encodes (its job's own hold may be
given back once the job store has it) and the copies encoding makes.
"""

from __future__ import annotations

import binascii
import weakref
from collections.abc import Callable
from typing import Any, Final, Literal

import msgspec
from aiohttp import web
from aiohttp.http_writer import StreamWriter

from sandboxd.api import textmode
from sandboxd.bodyhold import BodyHold
from sandboxd.schema import FileOut, JobInfo, RunResult, SubmissionResult

LARGE = 1 << 20  # bytes fields above this are pre-encoded in chunks
# Bytes per base64 call (a multiple of 3: chunks encode without padding).
# binascii holds the GIL throughout a call, on a thread as on the event loop,
# and on this loaded 2-core host 3 MiB took 9-120 ms (the output's fresh pages
# faulted in): 192 KiB takes well under a millisecond, so no slice of the
# loop spent on a reply's base64 (here or in sandboxd.api.streamjson) nears
# the 100 ms /healthz bound (benchmarks/hostile_load.py).
B64_CHUNK = 3 << 16
# Copies of a large reply's payload held at once, the result included.  msgpack:
# the result and its encoding (a socket frame is written as header + body, not
# joined).  JSON, whole (text mode): the result, its bytes' base64 in chunks then
# joined (2 x 4/3), then the document beside the joined Raw (4/3 more, the chunks
# gone).  JSON streamed (sandboxd.api.streamjson): the result, and a chunk.
REPLY_COPIES: Final = {"msgpack": 2.0, "json": 1 + 8 / 3, "stream": 1.0}
Encoding = Literal["msgpack", "json", "stream"]


def reply_cost(payload: int, how: Encoding) -> int:
    """The budget a reply carrying `payload` bytes holds while encoded and written."""
    return int(payload * REPLY_COPIES[how])


class HeldResponse(web.Response):
    """A large response: its bytes in the memory budget until its body is
    written out (write_eof returns once the transport has drained it), or
    the response is dropped unsent (a client gone: the finalizer).  Its
    headers go out on their own first: aiohttp coalesces them with the body
    by joining the two on Python < 3.12 (SKIP_WRITELINES), a copy of it all."""

    def hold(self, hold: BodyHold) -> None:
        self._held = hold
        weakref.finalize(self, hold.release)

    async def write_eof(self, data: bytes = b"") -> None:
        try:
            writer = self._payload_writer
            if isinstance(writer, StreamWriter):
                writer.send_headers()
            await super().write_eof(data)
        finally:
            held = getattr(self, "_held", None)
            if held is not None:
                held.release()


def payload_bytes(payload: Any) -> int:
    """The bytes a result carries (stdout, stderr, files): what encoding it costs."""
    if isinstance(payload, JobInfo):
        return payload_bytes(payload.result)
    if isinstance(payload, RunResult):
        return len(payload.stdout) + len(payload.stderr) + sum(len(f.content or b"") for f in payload.files)
    if isinstance(payload, SubmissionResult):
        return sum(payload_bytes(r) for r in payload.runs) + sum(len(t.stdout) + len(t.stderr) for t in payload.tests)
    return 0


def _b64(data: bytes) -> Any:
    if len(data) <= LARGE:
        return data
    view = memoryview(data)
    step = B64_CHUNK
    parts = [binascii.b2a_base64(view[i : i + step], newline=False) for i in range(0, len(data), step)]
    return msgspec.Raw(b"".join([b'"', *parts, b'"']))  # (one join: `b'"' + joined + b'"'` made two more copies)


Big = Callable[[bytes], Any]  # what a bytes field becomes in the JSON (a large one: Raw)


def _run(r: RunResult, big: Big) -> RunResult:
    if payload_bytes(r) <= LARGE:
        return r
    # (Raw where bytes are declared: msgspec encodes what it is given, unchecked.)
    files = [FileOut(f.path, big(f.content), f.error) if f.content else f for f in r.files]
    return msgspec.structs.replace(r, stdout=big(r.stdout), stderr=big(r.stderr), files=files)


def prepared(payload: Any, big: Big = _b64) -> Any:
    """The payload for msgspec.json.encode, each bytes field as `big` makes it."""
    if isinstance(payload, JobInfo) and payload.result is not None:
        return msgspec.structs.replace(payload, result=prepared(payload.result, big))
    if isinstance(payload, RunResult):
        return _run(payload, big)
    if isinstance(payload, SubmissionResult) and payload.runs:
        return msgspec.structs.replace(payload, runs=[_run(r, big) for r in payload.runs])
    return payload


def encode(fmt: Literal["json", "msgpack"], payload: Any, text: bool = False) -> bytes:
    """text: JSON's text mode (sandboxd.api.textmode); msgpack has bytes of its own."""
    if fmt == "msgpack":
        return msgspec.msgpack.encode(payload)  # bytes are copied as they are: no base64 to spread out
    if text:
        return msgspec.json.encode(textmode.tree(payload, _b64))
    return msgspec.json.encode(prepared(payload))


def response(body: bytes, status: int, ctype: str, hold: BodyHold | None) -> web.Response:
    """The reply: a held (large) one a HeldResponse, a small one in one write."""
    if hold is None:
        return web.Response(body=body, status=status, content_type=ctype)
    resp = HeldResponse(body=body, status=status, content_type=ctype)
    resp.hold(hold)
    return resp
