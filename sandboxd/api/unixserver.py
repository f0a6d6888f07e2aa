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

from sandboxd.api import accept, unixsocket
from sandboxd.api.bodies import Body
from sandboxd.api.inbound import MAPPED_FROM, RECEIVE_CHUNK, Inbound, Listener, receive_buffer
from sandboxd.api.inbound import default as default_inbound
from sandboxd.api.replies import payload_bytes
from sandboxd.api.wire import Frontend, dispatch
from sandboxd.bodyhold import BODY, BodyHold
from sandboxd.errors import ServiceError, as_error, error, make
from sandboxd.jobs.tenants import CALLER, Caller
from sandboxd.schema import Error, Request, TestResult

log = logging.getLogger(__name__)
LEN = struct.Struct(">I")
_enc = msgspec.msgpack.Encoder()
_req_dec = msgspec.msgpack.Decoder(Request)


class _Conn:
    def __init__(
        self,
        svc: Frontend,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        max_frame: int,
        inbound: Inbound,
        listener: Listener,
    ) -> None:
        self.svc = svc
        self.inbound = inbound
        self.listener = listener
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
        # One call (frames never interleave), not joined: a 64 MiB result's frame is not copied again.
        self.writer.writelines((LEN.pack(len(data)), data))

    def send_error(self, rid: Any, err: Error) -> None:
        self.send({"id": rid, "ok": False, "error": err})

    async def serve(self) -> None:
        inb, lst = self.inbound, self.listener
        if lst.open >= lst.cap or inb.connections >= inb.max_connections:
            why = f"too many connections (at most {lst.cap} on the socket, {inb.max_connections} in all): retry"
            self.send({"id": None, "ok": False, "error": make("queue_full", why)})
            self.writer.close()
            return
        lst.open += 1
        inb.connections += 1
        try:
            await self._frames()
        finally:
            lst.open -= 1
            inb.connections -= 1
            # A vanished client cannot read its results: stop what it was waiting for.
            for t in self.inflight.values():
                t.cancel()
            # (Not while stopping: then the connection closes because we do, and a
            # coordinator's jobs live on for the client to read elsewhere.)
            if not self.svc.draining:
                for jid in {j for rid, j in self.jobs.items() if rid not in self.kept}:
                    self._spawn(self._cancel_quietly(jid))
            self.writer.close()

    async def _head(self, first: bool) -> bytes | None:
        """The next frame's length prefix; None when the client went away or idled
        out: a first frame must come within http_header_timeout, later ones (with
        nothing in flight) within socket_idle_timeout."""
        if _buffered(self.reader) >= 4:
            return await self.reader.readexactly(4)  # (sent behind the last frame: no wait, no timer)
        timeout = self.inbound.header_timeout if first else self.inbound.socket_idle_timeout
        while True:
            try:
                async with asyncio.timeout(timeout):
                    return await self.reader.readexactly(4)
            except (asyncio.IncompleteReadError, ConnectionError):
                return None
            except TimeoutError:
                if self.inflight:
                    continue  # waiting for its results is not idling
                if not first:
                    why = f"connection idle for {timeout:g} s (socket_idle_timeout): closed, reconnect"
                    self.send_error(None, Error("bad_request", why))
                return None

    async def _body(self, n: int) -> Body | None:
        """The frame's n bytes, within http_body_timeout and the daemon-wide
        max_receiving_bytes (waited for, up to the same timeout: the socket's
        reader stops reading meanwhile, so the client is held back, not buffered)."""
        gate, timeout = self.inbound.receiving, self.inbound.body_timeout
        if not gate.try_acquire(n):  # (the common case takes no timer: issue 18)
            try:
                async with asyncio.timeout(timeout):
                    await gate.acquire(n)
            except TimeoutError:
                why = f"the daemon is receiving {gate.used} bytes (max_receiving_bytes {gate.capacity}): retry"
                self.send_error(None, make("queue_full", why))
                return None
        try:
            if n < MAPPED_FROM and _buffered(self.reader) >= n:
                # Already read with its head (a small frame comes in one segment):
                # readexactly returns it without waiting, so no timer (issue 18).
                return await self.reader.readexactly(n)
            async with asyncio.timeout(timeout):
                return await self._receive(n)
        except (asyncio.IncompleteReadError, ConnectionError):
            return None
        except TimeoutError:
            self.send_error(None, Error("bad_request", f"frame of {n} bytes not received within {timeout:g} s"))
            return None
        finally:
            gate.release(n)

    async def _receive(self, n: int) -> Body:
        """n bytes into one buffer, RECEIVE_CHUNK at a time: readexactly(n)
        grows the reader's buffer to n (copies on every growth) and copies it
        out whole at the end, 64 MiB at once on the event loop."""
        if n < MAPPED_FROM:
            return await self.reader.readexactly(n)
        buf = receive_buffer(n)
        view, got = memoryview(buf), 0
        try:
            while got < n:
                chunk = await self.reader.read(min(n - got, RECEIVE_CHUNK))
                if not chunk:
                    raise asyncio.IncompleteReadError(b"", n)
                view[got : got + len(chunk)] = chunk
                got += len(chunk)
        except BaseException:
            # (Not left to the garbage collector: the reader keeps the connection's
            # error, whose traceback holds this frame: sandboxd.api.receive.receive.)
            del view, buf
            raise
        view.release()
        return buf

    async def _frames(self) -> None:
        first = True
        while True:
            head = await self._head(first)
            if head is None:
                return
            first = False
            (n,) = LEN.unpack(head)
            if n > self.max_frame:
                # Cannot skip a frame we will not read: say why and hang up.
                self.send_error(None, Error("bad_request", f"frame of {n} bytes, more than {self.max_frame}"))
                await self._drain()
                return
            try:
                hold = self.inbound.hold_body(n)  # (refused before a byte of it is read)
            except ServiceError as e:
                self.send_error(None, e.err)
                await self._drain()
                return
            data = await self._body(n)
            if data is None:
                if hold is not None:
                    hold.release()
                await self._drain()
                return
            self.handle(data, hold)
            del data  # (the frame's buffer is its request's now: not kept while the next is awaited)
            if not await self._drain():
                return

    async def _drain(self) -> bool:
        """False when the client has not read its replies for http_body_timeout."""
        if not self.writer.transport.get_write_buffer_size() and not self.writer.is_closing():
            return True  # (nothing to wait for: no timer, issue 18)
        try:
            async with asyncio.timeout(self.inbound.body_timeout):
                await self.writer.drain()
            return True
        except TimeoutError:
            self.writer.transport.abort()
            return False
        except ConnectionError:
            return False

    def _spawn(self, coro: Any) -> None:
        t = asyncio.ensure_future(coro)
        self.cancels.add(t)
        t.add_done_callback(self.cancels.discard)

    async def _cancel_quietly(self, jid: str) -> None:
        with contextlib.suppress(ServiceError):
            await self.svc.cancel_job(jid)

    def handle(self, data: Body, hold: BodyHold | None = None) -> None:
        """One frame; `hold` (its bytes in the memory budget) is given back
        when its request is done with them."""
        task = self._start(data, hold)
        if hold is None:
            return
        if task is None:
            hold.release()
        else:
            task.add_done_callback(lambda _t: hold.release())

    def _start(self, data: Body, hold: BodyHold | None) -> asyncio.Task[None] | None:
        try:
            req = _req_dec.decode(data)
        except (msgspec.ValidationError, msgspec.DecodeError, UnicodeDecodeError, RecursionError) as e:
            # (msgspec reports invalid UTF-8 in a msgpack str as UnicodeDecodeError,
            # nesting deeper than the interpreter's recursion limit as RecursionError.)
            rid = None
            with contextlib.suppress(Exception):
                raw = msgspec.msgpack.decode(data)
                if isinstance(raw, dict) and isinstance(raw.get("id"), int | str):
                    rid = raw["id"]
            self.send_error(rid, Error("bad_request", f"request: {e}"))
            return None
        if req.id in self.inflight:
            self.send_error(req.id, Error("bad_request", f"id {req.id!r} is already in flight on this connection"))
            return None
        if req.op == "cancel" and bytes(req.body):
            with contextlib.suppress(Exception):
                ref = msgspec.msgpack.decode(bytes(req.body))
                if isinstance(ref, dict) and "request" in ref:
                    self._cancel_request(req.id, ref["request"])
                    return None
        task = asyncio.ensure_future(self.run(req, hold))
        self.inflight[req.id] = task
        rid = req.id
        task.add_done_callback(lambda _t: self.inflight.pop(rid, None))
        return task

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

    def _tenant(self, key: str) -> Caller:
        st = self.svc.tenants.by_key(key)
        if st is None:
            raise error("unauthorized", "api_key: no tenant has this key")
        return Caller(st)

    async def run(self, req: Request, hold: BodyHold | None = None) -> None:
        BODY.set(hold)  # (this task's own context: its job's admission takes its place, sandboxd.bodyhold)

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
            if req.api_key is not None:  # (its own task: the caller is this request's only)
                CALLER.set(self._tenant(req.api_key))
            result = await dispatch(
                self.svc,
                req.op,
                _take_body(req),
                "msgpack",
                wait=req.wait,
                progress=progress if req.progress else None,
                on_job=on_job,
                idempotency_key=req.idempotency_key,
                result_only=not req.progress,  # (with progress, on_job sends the job id first)
            )
            hold = self.inbound.hold_reply(payload_bytes(result), "msgpack")  # (encoded and handed to the socket)
            try:
                self.send({"id": req.id, "ok": True, "result": result})
            finally:
                if hold is not None:
                    hold.release()
        except asyncio.CancelledError:
            raise
        except Exception as e:
            err = as_error(e)
            if err is None:
                log.exception("request %r failed", req.id)
                err = make("internal", f"internal error: {e}")
            self.send_error(req.id, err)
        finally:
            self.jobs.pop(req.id, None)
            self.kept.discard(req.id)


def _buffered(reader: asyncio.StreamReader) -> int:
    """Bytes the reader holds, read from the socket and not yet taken (its
    buffer, a bytearray, is asyncio's own: not in StreamReader's public API)."""
    return len(getattr(reader, "_buffer", b""))


def _take_body(req: Request) -> memoryview:
    """A view of the frame's body (64 MiB not copied on the loop), no longer
    kept by the request: once decoded it is gone, not held (uncounted: its
    job's reservation took its place) while the job runs and its sender waits."""
    body, req.body = memoryview(req.body), msgspec.Raw()
    return body


async def start(
    svc: Frontend, path: str, mode: int, group: str, max_frame: int, inbound: Inbound | None = None
) -> asyncio.AbstractServer:
    limits = inbound or default_inbound()
    listener = Listener(limits.max_connections_per_listener)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    sock = unixsocket.bind(path)

    loop = asyncio.get_running_loop()

    async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _Conn(svc, reader, writer, max_frame, limits, listener).serve()

    def factory() -> asyncio.BaseProtocol:  # (what asyncio.start_unix_server makes for each connection)
        return asyncio.StreamReaderProtocol(asyncio.StreamReader(limit=1 << 20, loop=loop), on_client, loop=loop)

    try:
        if group:
            os.chown(path, -1, grp.getgrnam(group).gr_gid)
        os.chmod(path, mode)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        unixsocket.unlink_own(path)
        raise
    # (Not asyncio.start_unix_server: uvloop accepts one connection per turn
    # of the loop; sandboxd.api.accept takes all that wait.)
    return accept.Acceptor([sock], factory, "Unix socket")
