"""A submission's progress over HTTP as Server-Sent Events (text/event-stream).

`POST /v1/submissions` with `Accept: text/event-stream` answers with the
events the Unix socket streams for a request with `progress`: `accepted`
(`{"job": id}`), one `test` per finished test (a TestResult), then `result`
(the SubmissionResult) or `error` (`{"error": {code, message}}`), each `data`
one line of JSON.  A POST rather than `GET /v1/jobs/{id}/events`: listening
starts before the job exists, so no test's event is missed (a fleet host
publishes a job's tests only if a listener was there when it was queued, and
Redis pub/sub keeps no history); a browser reads the stream with fetch().

Bounded: at most `[http] max_event_streams` streams at once per process
(beyond: 503 + Retry-After, before the job starts), and each stream's
pending events in a queue of EVENT_QUEUE, the oldest test events dropped
first for a client that reads slower than tests finish (its final `result`
carries every test anyway); a write the client leaves unread for
`body_timeout` ends the stream (the job goes on, as for a waited request
whose client hangs up).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from aiohttp import web

from sandboxd.api.httpguard import RETRY_AFTER
from sandboxd.api.inbound import Inbound
from sandboxd.errors import as_error, make
from sandboxd.schema import Error, TestResult

EVENT_QUEUE = 1024  # test events a stream holds for a slow reader; beyond, the oldest go
KEEPALIVE = 15.0  # seconds between comments on a quiet stream (proxies close idle ones)
MEDIA = "text/event-stream"

# What the stream runs: (progress, on_job) -> the job's result.
Start = Callable[[Callable[[TestResult], None], Callable[[str], None]], Awaitable[Any]]


def wanted(req: web.Request) -> bool:
    return MEDIA in req.headers.get("Accept", "")


def encode(event: str, data: Any) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + msgspec.json.encode(data) + b"\n\n"


class _Stream:
    """One client's events: queued by the job's callbacks (synchronous), written by one task."""

    def __init__(self) -> None:
        self.queue: deque[bytes] = deque(maxlen=EVENT_QUEUE)
        self.ready = asyncio.Event()
        self.final: bytes | None = None

    def put(self, chunk: bytes) -> None:
        self.queue.append(chunk)  # (a full deque drops its oldest)
        self.ready.set()

    def end(self, chunk: bytes) -> None:
        self.final = chunk
        self.ready.set()

    async def pump(self, resp: web.StreamResponse, timeout: float) -> None:
        """Write until the final event is out (or the client stops reading)."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.ready.wait(), KEEPALIVE)
            self.ready.clear()
            chunks = list(self.queue)
            self.queue.clear()
            if self.final is not None:
                chunks.append(self.final)
            async with asyncio.timeout(timeout):
                await resp.write(b"".join(chunks) or b": keepalive\n\n")
            if self.final is not None:
                return


def refusal(inbound: Inbound) -> Error | None:
    """Why another stream cannot open now (the transport's 503, as its other caps), or None."""
    if inbound.event_streams < inbound.max_event_streams:
        return None
    why = f"{inbound.event_streams} event streams are open, max_event_streams: retry later"
    return Error("queue_full", why, RETRY_AFTER)


async def stream(req: web.Request, inbound: Inbound, start: Start) -> web.StreamResponse:
    """The job `start` runs, answered as an event stream (`refusal` checked first)."""
    inbound.event_streams += 1
    try:
        return await _serve(req, inbound, start)
    finally:
        inbound.event_streams -= 1


async def _serve(req: web.Request, inbound: Inbound, start: Start) -> web.StreamResponse:
    s = _Stream()
    resp = web.StreamResponse(headers={"Content-Type": MEDIA, "Cache-Control": "no-store"})
    job = asyncio.ensure_future(
        start(lambda t: s.put(encode("test", t)), lambda jid: s.put(encode("accepted", {"job": jid})))
    )
    # The headers wait for the job's acceptance (or its refusal, answered as a plain error
    # reply with its status): a client sees 200 only for a job that exists.
    accepted = asyncio.ensure_future(s.ready.wait())
    await asyncio.wait({job, accepted}, return_when=asyncio.FIRST_COMPLETED)
    accepted.cancel()
    if job.done() and not s.queue:
        await job  # a refusal: raised for the app's error reply
    job.add_done_callback(lambda f: s.end(_final(f)))
    await resp.prepare(req)
    with contextlib.suppress(ConnectionError, TimeoutError):
        await s.pump(resp, inbound.body_timeout)
    return resp


def _final(job: asyncio.Future[Any]) -> bytes:
    if job.cancelled():
        return encode("error", {"error": make("cancelled")})
    exc = job.exception()
    if exc is None:
        return encode("result", job.result())
    err = as_error(exc) or make("internal", f"internal error: {exc}")
    return encode("error", {"error": err})
