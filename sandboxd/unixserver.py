"""msgpack frames over a Unix socket: many requests in flight per connection.

Frame: a 4-byte big-endian length, then one msgpack map.  Requests carry an
id; replies and events carry it back, in whatever order jobs finish.  The
format is specified in docs/protocol.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import logging
import os
import struct
from typing import Any

import msgspec

from .errors import ServiceError
from .schema import Error, Request, TestResult
from .wire import Frontend, dispatch

log = logging.getLogger(__name__)
LEN = struct.Struct(">I")
_enc = msgspec.msgpack.Encoder()
_req_dec = msgspec.msgpack.Decoder(Request)


class _Conn:
    def __init__(
        self, svc: Frontend, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, max_frame: int
    ) -> None:
        self.svc = svc
        self.reader = reader
        self.writer = writer
        self.max_frame = max_frame
        self.inflight: dict[Any, asyncio.Task[None]] = {}
        self.jobs: dict[Any, str] = {}  # request id -> job id, for cancel-by-request
        self.kept: set[Any] = set()  # requests with an idempotency key: their client comes back for the job
        self.cancels: set[asyncio.Task[Any]] = set()

    def send(self, msg: dict[str, Any]) -> None:
        if self.writer.is_closing():
            return
        data = _enc.encode(msg)
        self.writer.write(LEN.pack(len(data)) + data)  # one write: frames never interleave

    def send_error(self, rid: Any, err: Error) -> None:
        self.send({"id": rid, "ok": False, "error": err})

    async def serve(self) -> None:
        try:
            while True:
                try:
                    head = await self.reader.readexactly(4)
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                (n,) = LEN.unpack(head)
                if n > self.max_frame:
                    # Cannot skip a frame we will not read: say why and hang up.
                    self.send_error(None, Error("bad_request", f"frame of {n} bytes, more than {self.max_frame}"))
                    await self.writer.drain()
                    return
                try:
                    data = await self.reader.readexactly(n)
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                self.handle(data)
                await self.writer.drain()
        finally:
            # A vanished client cannot read its results: stop what it was waiting for.
            for t in self.inflight.values():
                t.cancel()
            # (Not while stopping: then the connection closes because we do, and a
            # coordinator's jobs live on for the client to read elsewhere.)
            if not self.svc.draining:
                for jid in {j for rid, j in self.jobs.items() if rid not in self.kept}:
                    self._spawn(self._cancel_quietly(jid))
            self.writer.close()

    def _spawn(self, coro: Any) -> None:
        t = asyncio.ensure_future(coro)
        self.cancels.add(t)
        t.add_done_callback(self.cancels.discard)

    async def _cancel_quietly(self, jid: str) -> None:
        with contextlib.suppress(ServiceError):
            await self.svc.cancel_job(jid)

    def handle(self, data: bytes) -> None:
        try:
            req = _req_dec.decode(data)
        except (msgspec.ValidationError, msgspec.DecodeError, UnicodeDecodeError) as e:
            # (msgspec reports invalid UTF-8 in a msgpack str as UnicodeDecodeError.)
            rid = None
            with contextlib.suppress(Exception):
                raw = msgspec.msgpack.decode(data)
                if isinstance(raw, dict) and isinstance(raw.get("id"), int | str):
                    rid = raw["id"]
            self.send_error(rid, Error("bad_request", f"request: {e}"))
            return
        if req.id in self.inflight:
            self.send_error(req.id, Error("bad_request", f"id {req.id!r} is already in flight on this connection"))
            return
        if req.op == "cancel" and bytes(req.body):
            with contextlib.suppress(Exception):
                ref = msgspec.msgpack.decode(bytes(req.body))
                if isinstance(ref, dict) and "request" in ref:
                    self._cancel_request(req.id, ref["request"])
                    return
        task = asyncio.ensure_future(self.run(req))
        self.inflight[req.id] = task
        rid = req.id
        task.add_done_callback(lambda _t: self.inflight.pop(rid, None))

    def _cancel_request(self, rid: Any, target: Any) -> None:
        jid = self.jobs.get(target)
        if jid is None:
            self.send_error(rid, Error("not_found", f"no request {target!r} in flight on this connection"))
            return

        async def cancel() -> None:
            try:
                self.send({"id": rid, "ok": True, "result": await self.svc.cancel_job(jid)})
            except ServiceError as e:
                self.send_error(rid, e.err)

        self._spawn(cancel())

    async def run(self, req: Request) -> None:
        def progress(t: TestResult) -> None:
            self.send({"id": req.id, "event": "test", "data": t})

        def on_job(jid: str) -> None:
            if req.wait:
                self.jobs[req.id] = jid
            if req.idempotency_key is not None:
                self.kept.add(req.id)
            if req.progress:
                # Only on request: a plain run costs one reply frame, not two.
                self.send({"id": req.id, "event": "accepted", "data": {"job": jid}})

        try:
            result = await dispatch(
                self.svc,
                req.op,
                bytes(req.body),
                "msgpack",
                wait=req.wait,
                progress=progress if req.progress else None,
                on_job=on_job,
                idempotency_key=req.idempotency_key,
            )
            self.send({"id": req.id, "ok": True, "result": result})
        except ServiceError as e:
            self.send_error(req.id, e.err)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            log.exception("request %r failed", req.id)
            self.send_error(req.id, Error("internal", f"internal error: {e}"))
        finally:
            self.jobs.pop(req.id, None)
            self.kept.discard(req.id)


async def start(svc: Frontend, path: str, mode: int, group: str, max_frame: int) -> asyncio.AbstractServer:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)  # a stale socket from a crashed run; the instance lock says we own it

    async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _Conn(svc, reader, writer, max_frame).serve()

    # Created with no permissions; opened up only after chmod/chown, so there
    # is no window where anyone else can connect.
    old = os.umask(0o777)
    try:
        server = await asyncio.start_unix_server(on_client, path, limit=1 << 20)
    finally:
        os.umask(old)
    if group:
        os.chown(path, -1, grp.getgrnam(group).gr_gid)
    os.chmod(path, mode)
    return server
