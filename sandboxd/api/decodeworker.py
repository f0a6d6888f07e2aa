"""A decode worker process (sandboxd.api.decodepool): JSON in, msgpack out.

`python -m sandboxd.api.decodeworker`, started by the daemon; it imports only
msgspec and the schema.  It first writes READY, once confined.  On stdin, requests: a header (struct HEAD: the
length of the type's name, then of the body), the type's name (a class of
sandboxd.schema and, after a colon, what the body is called in errors; or
empty: untyped JSON) and the body.  On stdout, for each,
a reply: a status byte and a length (REPLY), then the payload: OK, the
decoded value as msgpack; BAD (typed), msgpack [code, message] of the
bad_request that `decode` raised; RAISED (untyped), msgpack [exception
class, message].  It runs as nobody when started as root, with no new
privileges, at a lower CPU priority (NICE), and dies with its parent.
"""

from __future__ import annotations

import ctypes
import os
import signal
import struct
import sys
from typing import Any, BinaryIO

import msgspec

from sandboxd import schema
from sandboxd.api.bodies import decode
from sandboxd.errors import ServiceError

HEAD = struct.Struct(">IQ")
REPLY = struct.Struct(">BQ")
OK, BAD, RAISED = 0, 1, 2
READY = b"R"
NOBODY = 65534
# Bulk work: on a busy host the daemon's event loop (and /healthz) gets the CPU first.
NICE = 10
_PR_SET_PDEATHSIG, _PR_SET_NO_NEW_PRIVS = 1, 38
_enc = msgspec.msgpack.Encoder()


def _confine() -> None:
    os.nice(NICE)
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getuid() == 0:  # it parses what anyone sent: none of root's powers
        os.setgroups([])
        os.setgid(NOBODY)
        os.setuid(NOBODY)
    libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)


# What JSON holds and msgpack cannot carry: integers beyond 64 bits.
WIDE = "Integer value out of range (more than 64 bits)"


def handle(name: str, body: bytes) -> tuple[int, bytes]:
    if not name:
        try:
            value = msgspec.json.decode(body)
        except (msgspec.DecodeError, msgspec.ValidationError, RecursionError) as e:
            return RAISED, _enc.encode([type(e).__name__, str(e)])
        except UnicodeDecodeError as e:  # (invalid UTF-8 in a string: malformed JSON, said so)
            return RAISED, _enc.encode(["DecodeError", str(e)])
        try:
            return OK, _enc.encode(value)
        except OverflowError:  # (no API takes such a number: refused as out of range)
            return RAISED, _enc.encode(["ValidationError", WIDE])
    name, _, what = name.partition(":")
    typ = getattr(schema, name, None)
    if not isinstance(typ, type) or not issubclass(typ, msgspec.Struct):
        return BAD, _enc.encode(["internal", f"decode worker: no schema type {name!r}"])
    try:
        return OK, _enc.encode(decode(body, typ, "json", what or "body"))
    except ServiceError as e:
        return BAD, _enc.encode([e.err.code, e.err.message])
    except OverflowError:
        return BAD, _enc.encode(["bad_request", f"{what or 'body'}: {WIDE}"])


def _exactly(f: BinaryIO, n: int) -> bytes | None:
    data = f.read(n)
    return data if len(data) == n else None


def serve(inp: BinaryIO, out: BinaryIO) -> None:
    while True:
        head = _exactly(inp, HEAD.size)
        if head is None:
            return  # the daemon closed the pipe (or died)
        nlen, blen = HEAD.unpack(head)
        name, body = _exactly(inp, nlen), _exactly(inp, blen)
        if name is None or body is None:
            return
        status, payload = handle(name.decode(), body)
        del body
        out.write(REPLY.pack(status, len(payload)))
        out.write(payload)
        out.flush()


def main() -> Any:
    _confine()
    try:
        sys.stdout.buffer.write(READY)  # (confined: the daemon sends nothing before this)
        sys.stdout.buffer.flush()
        serve(sys.stdin.buffer, sys.stdout.buffer)
    except BrokenPipeError:  # the daemon stopped us
        os._exit(0)


if __name__ == "__main__":
    main()
