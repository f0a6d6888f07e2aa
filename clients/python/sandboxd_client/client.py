"""One asyncio implementation; the sync Client drives it on a private event loop."""

from __future__ import annotations

import asyncio
import itertools
import struct
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar
from urllib.parse import urlparse

import aiohttp
import msgspec

from sandboxd.schema import JobInfo, RunRequest, RunResult, Submission, SubmissionResult, TestResult

T = TypeVar("T")
LEN = struct.Struct(">I")
Progress = Callable[[TestResult], None]


class SandboxdError(Exception):
    """The daemon refused or failed a request; `code` is the wire error code."""

    def __init__(self, code: str, message: str, retry_after: float | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.retry_after = retry_after


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

    async def connect(self) -> None:
        self.reader, self.writer = await asyncio.open_unix_connection(self.path, limit=1 << 20)
        self.task = asyncio.ensure_future(self._read())

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
                    err = msg["error"]
                    self._fail(SandboxdError(err["code"], err["message"]))
                    return
        except (asyncio.IncompleteReadError, ConnectionError) as e:
            self._fail(SandboxdError("disconnected", f"connection to sandboxd lost: {e}"))

    def _fail(self, exc: Exception) -> None:
        self.closed = exc
        for fut in self.waiters.values():
            if not fut.done():
                fut.set_exception(exc)
        self.waiters.clear()

    async def call(
        self, op: str, body: Any, wait: bool = True, on_event: Callable[[str, Any], None] | None = None
    ) -> Any:
        if self.closed is not None:
            raise self.closed
        assert self.writer is not None
        rid = next(self.ids)
        req: dict[str, Any] = {"id": rid, "op": op, "wait": wait, "progress": on_event is not None}
        if body is not None:
            req["body"] = body
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
            if self.closed is None and not self.writer.is_closing():
                cancel = msgspec.msgpack.encode({"id": next(self.ids), "op": "cancel", "body": {"request": rid}})
                self.writer.write(LEN.pack(len(cancel)) + cancel)
            raise
        finally:
            self.waiters.pop(rid, None)
            self.listeners.pop(rid, None)
        if not msg["ok"]:
            e = msg["error"]
            raise SandboxdError(e["code"], e["message"], e.get("retry_after"))
        return msg["result"]

    async def close(self) -> None:
        if self.writer is not None:
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
        self, op: str, body: Any, wait: bool = True, on_event: Callable[[str, Any], None] | None = None
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
        async with self.session.request(method, self.base + path, data=data) as resp:
            raw = await resp.read()
            payload = msgspec.msgpack.decode(raw) if resp.content_type.endswith("msgpack") else msgspec.json.decode(raw)
            if resp.status >= 400:
                e = payload.get("error", {}) if isinstance(payload, dict) else {}
                raise SandboxdError(
                    e.get("code", str(resp.status)),
                    e.get("message", raw[:200].decode(errors="replace")),
                    e.get("retry_after"),
                )
            return payload

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()


class AsyncClient:
    def __init__(self, address: str = "unix:///run/sandboxd/sandboxd.sock", token: str | None = None) -> None:
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

    async def run(self, req: RunRequest) -> RunResult:
        return msgspec.convert(await self._t.call("run", req), RunResult)

    async def submit(self, sub: Submission, progress: Progress | None = None) -> SubmissionResult:
        def on_event(kind: str, data: Any) -> None:
            if kind == "test" and progress is not None:
                progress(msgspec.convert(data, TestResult))

        raw = await self._t.call("submit", sub, on_event=on_event if progress else None)
        return msgspec.convert(raw, SubmissionResult)

    async def start(self, job: RunRequest | Submission) -> str:
        """Queue a job without waiting; returns its id for get()/wait()/cancel()."""
        op = "run" if isinstance(job, RunRequest) else "submit"
        return str((await self._t.call(op, job, wait=False))["job"])

    async def get(self, job: str) -> JobInfo:
        return _job_info(await self._t.call("get", {"job": job}))

    async def wait(self, job: str) -> JobInfo:
        return _job_info(await self._t.call("wait", {"job": job}))

    async def cancel(self, job: str) -> JobInfo:
        return _job_info(await self._t.call("cancel", {"job": job}))

    async def status(self) -> dict[str, Any]:
        return dict(await self._t.call("status", None))

    async def languages(self) -> list[dict[str, Any]]:
        return list(await self._t.call("languages", None))


def _job_info(d: dict[str, Any]) -> JobInfo:
    return msgspec.convert(d, JobInfo)


class Client:
    """Blocking API over AsyncClient, on a private event loop thread."""

    def __init__(self, address: str = "unix:///run/sandboxd/sandboxd.sock", token: str | None = None) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._client = AsyncClient(address, token)
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

    def run(self, req: RunRequest) -> RunResult:
        return self._call(self._client.run(req))

    def submit(self, sub: Submission, progress: Progress | None = None) -> SubmissionResult:
        return self._call(self._client.submit(sub, progress))

    def start(self, job: RunRequest | Submission) -> str:
        return self._call(self._client.start(job))

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
