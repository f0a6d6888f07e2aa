"""Judge0's /submissions routes: create (one, or a batch), show, delete."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from sandboxd.api.wire import check_idempotency_key
from sandboxd.bodyhold import stored
from sandboxd.compat.judge0.api import Judge0
from sandboxd.compat.judge0.http import J0, J0Error, b64, fields, handler, params, reply
from sandboxd.compat.judge0.request import Request
from sandboxd.compat.judge0.serializer import view
from sandboxd.compat.judge0.status import outcome
from sandboxd.compat.judge0.tables import CONFIG, NOT_UTF8, NOT_UTF8_BATCH, STATUSES
from sandboxd.schema import JobInfo


async def _queue_check(j0: Judge0, n: int) -> None:
    load = await j0.backend.compat_load()
    if load.queued + n > load.limit:
        raise J0Error(503, {"error": "queue is full"})


@handler
async def create_submission(req: web.Request) -> web.Response:
    j0 = req.app[J0]
    wait = req.query.get("wait") == "true"
    key = check_idempotency_key(req.headers.get("Idempotency-Key"), "Idempotency-Key header")
    await _queue_check(j0, 1)
    selected = fields(req)
    base64_encoded = b64(req)
    built = await j0.build(await params(req), base64_encoded)
    if not isinstance(built, Request):
        return reply(built, 422)
    token = await j0.create(built, key)
    stored()  # (the body and its decoded text are gone: the rest of its hold is not kept while the job is waited for)
    if not wait:
        return reply({"token": token}, 201)
    info = await j0.backend.wait_job(token)
    # Read back: the record as every later GET shows it (a fleet's times are Redis's).
    found = await j0.get(token)
    try:
        return reply(view(token, *(found or (built, info)), selected, base64_encoded), 201)
    except UnicodeDecodeError:
        return reply({"error": NOT_UTF8, "token": token}, 201)


async def _by_token(req: web.Request) -> tuple[Judge0, str, tuple[str, ...], tuple[Request, JobInfo]]:
    """(the API, the path's token, the selected fields, its submission); J0Error 404 (empty) if none."""
    j0 = req.app[J0]
    selected = fields(req)
    token = req.match_info["token"]
    found = await j0.get(token)
    if found is None:
        raise J0Error(404)
    return j0, token, selected, found


@handler
async def get_submission(req: web.Request) -> web.Response:
    _, token, selected, found = await _by_token(req)
    try:
        return reply(view(token, *found, selected, b64(req)))
    except UnicodeDecodeError:
        return reply({"error": NOT_UTF8}, 400)


@handler
async def delete_submission(req: web.Request) -> web.Response:
    j0, token, selected, found = await _by_token(req)
    o = outcome(*found)
    gone = "pending" if o.pending else await j0.backend.forget_job(token)
    if gone == "missing":  # deleted by someone else a moment ago
        return reply(None, 404)
    if gone == "pending":
        sid = o.status_id
        raise J0Error(400, {"error": f"submission cannot be deleted because its status is {sid} ({STATUSES[sid]})"})
    return reply(view(token, *found, selected, True))  # base64 forced: the data must survive the delete


@handler
async def list_submissions(req: web.Request) -> web.Response:
    return reply(None, 403)  # Judge0 requires authorization (X-Auth-User) to list all submissions


def _batch_size(n: int) -> None:
    limit = CONFIG["max_submission_batch_size"]
    if n > limit:
        raise J0Error(400, {"error": f"number of submissions in a batch should be less than or equal to {limit}"})
    if n == 0:
        raise J0Error(400, {"error": "there should be at least one submission in a batch"})


@handler
async def batch_create(req: web.Request) -> web.Response:
    j0 = req.app[J0]
    base64_encoded = b64(req)
    body = await params(req)
    subs = body.get("submissions")
    n = len(subs) if isinstance(subs, (list, dict)) else 0
    await _queue_check(j0, n or 1)
    _batch_size(n)
    items = subs if isinstance(subs, list) else list(subs.values())  # type: ignore[union-attr]
    built = [await j0.build(item if isinstance(item, dict) else {}, base64_encoded) for item in items]
    out: list[Any] = []
    for b in built:
        out.append({"token": await j0.create(b)} if isinstance(b, Request) else b)
    return reply(out, 201 if any(isinstance(b, Request) for b in built) else 422)


@handler
async def batch_show(req: web.Request) -> web.Response:
    j0 = req.app[J0]
    selected = fields(req)
    raw = req.headers.get("tokens") or req.query.get("tokens", "")
    tokens = [t for t in raw.strip().split(",") if t]
    _batch_size(len(tokens))
    base64_encoded = b64(req)
    found = await asyncio.gather(*(j0.get(t) for t in tokens))
    try:
        out = [None if f is None else view(t, *f, selected, base64_encoded) for t, f in zip(tokens, found, strict=True)]
    except UnicodeDecodeError:
        raise J0Error(400, {"error": NOT_UTF8_BATCH}) from None
    return reply({"submissions": out})
