"""One asyncio implementation; the sync Client drives it on a private event loop.

Calls that start a job send an idempotency key and are retried with it
(sandboxd_client.retry): a client survives a daemon restart, a coordinator
failover or a Redis restart without running a job twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import struct
import threading
import uuid
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar
from urllib.parse import urlparse

import aiohttp
import msgspec

from sandboxd.schema import JobInfo, RunRequest, RunResult, Submission, SubmissionResult, TestResult

from .retry import DEFAULT_RETRY, RETRY_CODES, RETRY_EXCEPTIONS, RETRY_STATUSES, Retry

T = TypeVar("T")
LEN = struct.Struct(">I")
Progress = Callable[[TestResult], None]
EVENT_LINE_MAX = 1 << 30  # bytes of one event's line (a SubmissionResult's JSON)


class SandboxdError(Exception):
    """The daemon refused or failed a request; `code` is the wire error code."""

    def __init__(self, code: str, message: str, retry_after: float | None = None, status: int | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.retry_after = retry_after
        self.status = status  # the HTTP status (None over the socket)


class _Lost(SandboxdError):
    """The connection that carried the call dropped (not a refusal): a new outage starts."""

    def __init__(self, message: str) -> None:
        super().__init__("disconnected", message)


# What says the call had a live connection that then dropped: a refused
# connection (ClientConnectorError) or an error reply says nothing of the sort.
_LOST = (_Lost, aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError)


def _lost(exc: BaseException) -> bool:
    return isinstance(exc, _LOST) or (
        isinstance(exc, aiohttp.ClientOSError) and not isinstance(exc, aiohttp.ClientConnectorError)
    )


class _Unix:
    def __init__(self, path: str) -> None:
        self.path = path
        self.ids = itertools.count(1)
        self.waiters: dict[int, asyncio.Future[Any]] = {}
        self.listeners: dict[int, Callable[[str, Any], None]] = {}
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.task: asyncio.Task[None] | None = None
        self.closed: Exception | None = None
        self.started: set[int] = set()  # waited run/submit requests in flight: cancelled by close()
        self.lock = asyncio.Lock()

    async def connect(self) -> None:
        self.reader, self.writer = await asyncio.open_unix_connection(self.path, limit=1 << 20)
        self.closed = None
        self.task = asyncio.ensure_future(self._read())

    async def _ensure(self) -> None:
        """Connected, again if the last connection dropped (the daemon restarted)."""
        async with self.lock:
            if self.writer is not None and self.closed is None and not self.writer.is_closing():
                return
            if self.task is not None:
                self.task.cancel()
            if self.writer is not None:
                self.writer.close()
            await self.connect()

    async def _read(self) -> None:
        assert self.reader is not None
        try:
            while True:
                (n,) = LEN.unpack(await self.reader.readexactly(4))
                msg = msgspec.msgpack.decode(await self.reader.readexactly(n))
                rid = msg.get("id")
                if "event" in msg:
                    cb = self.listeners.get(rid)
                    if cb is not None:
                        cb(msg["event"], msg.get("data"))
                    continue
                fut = self.waiters.pop(rid, None)
                if fut is not None and not fut.done():
                    fut.set_result(msg)
                elif rid is None and not msg.get("ok", True):
                    # About the connection, not a request (a connection or receive cap,
                    # an idle timeout): the daemon closes it; what waited on it is retried.
                    err = msg["error"]
                    why = f"connection closed by sandboxd ({err['code']}: {err['message']})"
                    self._fail(SandboxdError("disconnected", why, err.get("retry_after")))
                    return
        except (asyncio.IncompleteReadError, ConnectionError) as e:
            self._fail(_Lost(f"connection to sandboxd lost: {e}"))

    def _fail(self, exc: Exception) -> None:
        self.closed = exc
        for fut in self.waiters.values():
            if not fut.done():
                fut.set_exception(exc)
        self.waiters.clear()

    async def call(
        self,
        op: str,
        body: Any,
        wait: bool = True,
        on_event: Callable[[str, Any], None] | None = None,
        key: str | None = None,
    ) -> Any:
        await self._ensure()
        assert self.writer is not None
        rid = next(self.ids)
        req: dict[str, Any] = {"id": rid, "op": op, "wait": wait, "progress": on_event is not None}
        if body is not None:
            req["body"] = body
        if key is not None:
            req["idempotency_key"] = key
            if wait:
                self.started.add(rid)
        data = msgspec.msgpack.encode(req)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.waiters[rid] = fut
        if on_event is not None:
            self.listeners[rid] = on_event
        self.writer.write(LEN.pack(len(data)) + data)
        try:
            await self.writer.drain()
            msg = await fut
        except asyncio.CancelledError:
            # Tell the daemon too: the job stops and its boxes are freed.
            self._cancel(rid)
            raise
        finally:
            self.waiters.pop(rid, None)
            self.listeners.pop(rid, None)
            self.started.discard(rid)
        if not msg["ok"]:
            e = msg["error"]
            raise SandboxdError(e["code"], e["message"], e.get("retry_after"))
        return msg["result"]

    def _cancel(self, rid: int) -> None:
        if self.closed is None and self.writer is not None and not self.writer.is_closing():
            cancel = msgspec.msgpack.encode({"id": next(self.ids), "op": "cancel", "body": {"request": rid}})
            self.writer.write(LEN.pack(len(cancel)) + cancel)

    async def close(self) -> None:
        # A keyed job outlives a dropped connection (so that a retry can find
        # it); a client that closes on purpose cancels what it still waits for.
        for rid in list(self.started):
            self._cancel(rid)
        if self.writer is not None:
            with contextlib.suppress(ConnectionError):
                await self.writer.drain()
            self.writer.close()
        if self.task is not None:
            self.task.cancel()


class _Http:
    def __init__(self, base: str, token: str | None) -> None:
        self.base = base.rstrip("/")
        self.headers = {"Content-Type": "application/msgpack", "Accept": "application/msgpack"}
        if token:
            self.headers["Authorization"] = f"Bearer {token}"
        self.session: aiohttp.ClientSession | None = None

    async def connect(self) -> None:
        self.session = aiohttp.ClientSession(headers=self.headers)

    async def call(
        self,
        op: str,
        body: Any,
        wait: bool = True,
        on_event: Callable[[str, Any], None] | None = None,
        key: str | None = None,
    ) -> Any:
        assert self.session is not None
        w = "true" if wait else "false"
        routes: dict[str, tuple[str, str]] = {
            "run": ("POST", f"/v1/runs?wait={w}"),
            "submit": ("POST", f"/v1/submissions?wait={w}"),
            "status": ("GET", "/v1/status"),
            "languages": ("GET", "/v1/languages"),
            "ping": ("GET", "/healthz"),
        }
        if op in ("get", "cancel", "wait"):
            method = {"get": "GET", "wait": "GET", "cancel": "DELETE"}[op]
            path = f"/v1/jobs/{body['job']}" + ("?wait=300" if op == "wait" else "")
            data = None
        else:
            method, path = routes[op]
            data = msgspec.msgpack.encode(body) if method == "POST" else None
        headers = {"Idempotency-Key": key} if key is not None else {}
        if op == "submit" and wait and on_event is not None:
            # Its tests as they finish: Server-Sent Events, as the socket's progress frames.
            headers["Accept"] = "text/event-stream"
        async with self.session.request(method, self.base + path, data=data, headers=headers) as resp:
            if resp.status < 400 and resp.content_type == "text/event-stream" and on_event is not None:
                return await _events(resp, on_event)
            raw = await resp.read()
            try:
                msgpack = resp.content_type.endswith("msgpack")
                payload = msgspec.msgpack.decode(raw) if msgpack else msgspec.json.decode(raw)
            except msgspec.DecodeError:
                if resp.status < 400:
                    raise
                payload = None  # an error page of a proxy in front of sandboxd
            if resp.status >= 400:
                raise _http_error(resp.status, resp.headers.get("Retry-After"), payload, raw)
            return payload

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()


async def _events(resp: aiohttp.ClientResponse, on_event: Callable[[str, Any], None]) -> Any:
    """Read a text/event-stream reply: `accepted` and `test` events to on_event,
    then the `result` (returned) or the `error` (raised)."""
    event = ""
    while not resp.content.at_eof():
        # (One line is one event's data: a result with its outputs can be megabytes.)
        text = (await resp.content.readuntil(b"\n", max_size=EVENT_LINE_MAX)).decode().rstrip("\r\n")
        if text.startswith("event:"):
            event = text[6:].strip()
        elif text.startswith("data:"):
            data = msgspec.json.decode(text[5:].strip())
            if event == "result":
                return data
            if event == "error":
                e = data.get("error", {}) if isinstance(data, dict) else {}
                raise SandboxdError(e.get("code", "internal"), e.get("message", ""), e.get("retry_after"))
            on_event(event, data)
    raise _Lost("the event stream ended before the result")


def _http_error(status: int, retry_after: str | None, payload: Any, raw: bytes) -> SandboxdError:
    e = payload.get("error", {}) if isinstance(payload, dict) else {}
    after = e.get("retry_after")
    if after is None and retry_after is not None and retry_after.isdigit():
        after = float(retry_after)
    # A 503 without sandboxd's body (a proxy, a load balancer) is "not now" too.
    code = e.get("code", "draining" if status == 503 else str(status))
    return SandboxdError(code, e.get("message", raw[:200].decode(errors="replace")), after, status)


def _retry_after(exc: BaseException) -> float | None:
    """None if exc is final; else the least wait the server asked for (0 if none)."""
    if isinstance(exc, SandboxdError):
        retry = exc.code in RETRY_CODES or exc.status in RETRY_STATUSES
        return (exc.retry_after or 0.0) if retry else None
    if isinstance(exc, RETRY_EXCEPTIONS):
        return 0.0
    return None


class AsyncClient:
    """`retry`: how calls are retried (sandboxd_client.retry.Retry); calls
    that start a job (run, submit, start) take `idempotency_key=` (a fresh
    uuid4 hex if not given) and re-send that same key on every retry."""

    def __init__(
        self,
        address: str = "unix:///run/sandboxd/sandboxd.sock",
        token: str | None = None,
        retry: Retry = DEFAULT_RETRY,
    ) -> None:
        self.retry = retry
        u = urlparse(address)
        if u.scheme == "unix":
            self._t: _Unix | _Http = _Unix(u.path)
        elif u.scheme in ("http", "https"):
            self._t = _Http(address, token)
        else:
            raise ValueError(f"address {address!r}: use unix:///path or http://host:port")

    async def __aenter__(self) -> AsyncClient:
        await self._t.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._t.close()

    async def _call(
        self,
        op: str,
        body: Any,
        wait: bool = True,
        on_event: Callable[[str, Any], None] | None = None,
        key: str | None = None,
    ) -> Any:
        """One call, retried under self.retry.  Safe for every op: reads and
        cancels are idempotent, and a job is started under its key.

        The deadline bounds an outage, not the call: it counts from the first
        failure, and a live connection that drops (a waited call may have run
        for longer than the deadline) starts a new outage.  Refusals and
        refused connections do not: they end the call at the deadline."""
        loop = asyncio.get_running_loop()
        end, attempt = 0.0, 0
        while True:
            try:
                return await self._t.call(op, body, wait, on_event, key)
            except Exception as e:
                after = _retry_after(e)
                if after is None:
                    raise
                if not attempt or _lost(e):
                    end, attempt = loop.time() + self.retry.deadline, 0
                delay = max(self.retry.backoff(attempt), after)
                if loop.time() + delay > end:
                    raise
                attempt += 1
                await asyncio.sleep(delay)

    async def run(self, req: RunRequest, *, idempotency_key: str | None = None) -> RunResult:
        return msgspec.convert(await self._call("run", req, key=idempotency_key or _key()), RunResult)

    async def submit(
        self, sub: Submission, progress: Progress | None = None, *, idempotency_key: str | None = None
    ) -> SubmissionResult:
        """(After a retry, `progress` hears only the tests that finish after it.)"""

        def on_event(kind: str, data: Any) -> None:
            if kind == "test" and progress is not None:
                progress(msgspec.convert(data, TestResult))

        key = idempotency_key or _key()
        raw = await self._call("submit", sub, on_event=on_event if progress else None, key=key)
        return msgspec.convert(raw, SubmissionResult)

    async def start(self, job: RunRequest | Submission, *, idempotency_key: str | None = None) -> str:
        """Queue a job without waiting; returns its id for get()/wait()/cancel()."""
        op = "run" if isinstance(job, RunRequest) else "submit"
        return str((await self._call(op, job, wait=False, key=idempotency_key or _key()))["job"])

    async def get(self, job: str) -> JobInfo:
        return _job_info(await self._call("get", {"job": job}))

    async def wait(self, job: str) -> JobInfo:
        return _job_info(await self._call("wait", {"job": job}))

    async def cancel(self, job: str) -> JobInfo:
        return _job_info(await self._call("cancel", {"job": job}))

    async def status(self) -> dict[str, Any]:
        return dict(await self._call("status", None))

    async def languages(self) -> list[dict[str, Any]]:
        return list(await self._call("languages", None))


def _key() -> str:
    return uuid.uuid4().hex


def _job_info(d: dict[str, Any]) -> JobInfo:
    return msgspec.convert(d, JobInfo)


class Client:
    """Blocking API over AsyncClient, on a private event loop thread."""

    def __init__(
        self,
        address: str = "unix:///run/sandboxd/sandboxd.sock",
        token: str | None = None,
        retry: Retry = DEFAULT_RETRY,
    ) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._client = AsyncClient(address, token, retry)
        self._call(self._client.__aenter__())

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._call(self._client.__aexit__())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def run(self, req: RunRequest, *, idempotency_key: str | None = None) -> RunResult:
        return self._call(self._client.run(req, idempotency_key=idempotency_key))

    def submit(
        self, sub: Submission, progress: Progress | None = None, *, idempotency_key: str | None = None
    ) -> SubmissionResult:
        return self._call(self._client.submit(sub, progress, idempotency_key=idempotency_key))

    def start(self, job: RunRequest | Submission, *, idempotency_key: str | None = None) -> str:
        return self._call(self._client.start(job, idempotency_key=idempotency_key))

    def get(self, job: str) -> JobInfo:
        return self._call(self._client.get(job))

    def wait(self, job: str) -> JobInfo:
        return self._call(self._client.wait(job))

    def cancel(self, job: str) -> JobInfo:
        return self._call(self._client.cancel(job))

    def status(self) -> dict[str, Any]:
        return self._call(self._client.status())

    def languages(self) -> list[dict[str, Any]]:
        return self._call(self._client.languages())
