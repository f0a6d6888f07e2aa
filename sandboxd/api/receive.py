"""HTTP request bodies received into one buffer (sandboxd.api.httpserver.with_body).

- `receive`: the body, a chunk at a time as it arrives, into one buffer of
  its declared size, kept as the request's body for `request.read()`.
- `take_body`: the body, no longer kept by the request (once decoded it is
  gone while its job runs).
"""

from __future__ import annotations

from aiohttp import web

from sandboxd.api.bodies import Body
from sandboxd.api.inbound import receive_buffer
from sandboxd.errors import error

# (Forms are received into a bytearray: their parser, aiohttp's request.post(), wants bytes' methods.)
FORMS = ("application/x-www-form-urlencoded", "multipart/form-data")


async def receive(request: web.Request) -> None:
    """The body, into one buffer of its declared size, a chunk at a time as it
    arrives; handlers then get that buffer from `request.read()`.

    aiohttp's own read() raises the stream's buffer to client_max_size (so one
    chunk can be tens of MiB, joined and copied on the event loop at once),
    grows a bytearray and copies it whole into bytes at the end: with 64 MiB
    bodies, stalls of the loop (and /healthz) of hundreds of ms.  Here every
    copy is of one chunk as the transport buffered it (the stream's default
    limit: about 128 KiB), into a buffer allocated once and handed over as it
    is (every decoder takes a buffer; a large one is an anonymous mapping:
    sandboxd.api.inbound.receive_buffer).  A body without Content-Length
    (chunked) or compressed is read by aiohttp as before."""
    n = request.content_length
    if n is None or request.headers.get("Content-Encoding", "identity").lower() != "identity":
        await request.read()  # (a compressed body's length is not its declared one; read() caps it at max_body)
        return
    buf = receive_buffer(n, request.content_type not in FORMS)
    view, got, content = memoryview(buf), 0, request.content
    try:
        while got < n:
            chunk = await content.readany()
            if not chunk or got + len(chunk) > n:
                raise error("bad_request", f"body: {got + len(chunk)} bytes where Content-Length said {n}")
            view[got : got + len(chunk)] = chunk
            got += len(chunk)
    except BaseException:
        # A body cut short (hang-up, timeout) must not wait for the garbage
        # collector: the request's stream keeps the connection's error, whose
        # traceback holds this frame, a cycle that kept two stalled 50 MiB
        # uploads' buffers mapped long after their budget hold was given back.
        del view, buf
        raise
    view.release()  # (the mapping is unmapped when the last reference to it goes)
    # (read() returns what it has read before: aiohttp 3.x keeps it here.)
    request._read_bytes = buf  # type: ignore[assignment]


async def take_body(request: web.Request) -> Body:
    """The body, no longer kept by the request: once decoded it is gone, not
    held (uncounted: its job's reservation took its place) while the job runs
    and its sender waits."""
    body = await request.read()
    request._read_bytes = None  # (a later read() would find the stream at its end: b"")
    return body
