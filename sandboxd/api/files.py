"""The file store on both transports: `PUT/HEAD/GET /v1/files/{sha256}` and
the socket's `files` op, over whatever store the Frontend has (a host daemon's
disk, the fleet's Redis behind a coordinator: sandboxd.jobs.files.FileOps).

An upload streams: the body goes to the store chunk by chunk as it arrives
(never whole in memory), each chunk within http.body_timeout, at most
files.max_file bytes; its SHA-256 must be the one in the path.  Uploading a
stored file again is a no-op (200; new: 201).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from sandboxd.api.bodies import Body, Format, decode
from sandboxd.errors import error
from sandboxd.filestore import CHUNK, HEX
from sandboxd.jobs.files import FileOps
from sandboxd.schema import FilesRequest

ROUTE = "/v1/files/{sha256}"


def ops_of(svc: object) -> FileOps:
    ops = getattr(svc, "files", None)
    if not isinstance(ops, FileOps):
        raise error("not_found", "this server has no file store")
    return ops


def _sha(req: web.Request) -> str:
    sha = req.match_info["sha256"]
    if not HEX.fullmatch(sha):
        raise error("bad_request", f"sha256: {sha[:80]!r} is not a lowercase hex SHA-256 (64 characters 0-9a-f)")
    return sha


async def _body(req: web.Request, timeout: float) -> AsyncIterator[bytes]:
    while True:
        try:
            async with asyncio.timeout(timeout):
                chunk = await req.content.readany()
        except TimeoutError:
            raise error("bad_request", f"body: no bytes for {timeout} s (http.body_timeout)") from None
        if not chunk:
            return
        yield chunk


async def put(req: web.Request, svc: object, timeout: float) -> web.Response:
    ops, sha = ops_of(svc), _sha(req)
    declared = req.content_length
    if declared is not None and declared > ops.max_file:
        raise error("too_large", f"body: {declared} bytes, more than files.max_file = {ops.max_file}")
    created = await ops.put_file(sha, _body(req, timeout))
    size = await ops.file_size(sha)
    return web.json_response({"sha256": sha, "size": size, "created": created}, status=201 if created else 200)


async def head(req: web.Request, svc: object) -> web.Response:
    size = await ops_of(svc).file_size(_sha(req))
    if size is None:
        return web.Response(status=404)
    return web.Response(status=200, headers={"Content-Length": str(size), "Content-Type": "application/octet-stream"})


async def get(req: web.Request, svc: object) -> web.StreamResponse:
    ops, sha = ops_of(svc), _sha(req)
    size = await ops.file_size(sha)
    if size is None:
        raise error("not_found", f"no file {sha} in the store")
    chunks = ops.file_chunks(sha)
    first = await anext(chunks, b"")  # (not_found before the headers go out)
    resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
    resp.content_length = size
    await resp.prepare(req)
    await resp.write(first)
    async for chunk in chunks:
        await resp.write(chunk)
    await resp.write_eof()
    return resp


async def _one(data: bytes) -> AsyncIterator[bytes]:
    for i in range(0, len(data), CHUNK):
        yield data[i : i + CHUNK]


async def socket_op(svc: object, body: Body, fmt: Format) -> dict[str, Any]:
    """The socket's `files` op: one frame carries the whole file (so at most http.max_body)."""
    req = decode(body, FilesRequest, fmt)
    ops = ops_of(svc)
    if req.action == "put":
        if len(req.content) > ops.max_file:
            raise error("too_large", f"content: {len(req.content)} bytes, more than files.max_file = {ops.max_file}")
        created = await ops.put_file(req.sha256, _one(req.content))
        return {"sha256": req.sha256, "size": len(req.content), "created": created}
    size = await ops.file_size(req.sha256)
    if size is None:
        raise error("not_found", f"no file {req.sha256} in the store")
    if req.action == "head":
        return {"sha256": req.sha256, "size": size}
    content = b"".join([c async for c in ops.file_chunks(req.sha256)])
    return {"sha256": req.sha256, "size": size, "content": content}
