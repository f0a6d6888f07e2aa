"""A compat API's JSON body, decoded without holding the body beside its value.

Judge0 and Piston take base64 files and zips of up to max_body in JSON.  The
memory budget counts such a body 2.5 times while its request is admitted
(sandboxd.bodyhold): the received buffer, the decode worker's msgpack and the
value (a str as long as the base64).  aiohttp's `request.read()` keeps the
body for the request's life, so it was held beside both, and beside the job's
stored spec and its run: three copies and more.  Here the body is taken from
the request (sandboxd.api.receive.take_body) and freed once its decoder has
read it, so at most two of the three are held at once.
"""

from __future__ import annotations

from typing import Any

import msgspec
from aiohttp import web

from sandboxd.api.bodies import Body
from sandboxd.api.decodepool import DECODE
from sandboxd.api.inbound import offload
from sandboxd.api.receive import take_body


def _decode(held: list[Body]) -> Any:
    # (Popped into the call: no frame keeps the body once its decoder is done with it.)
    if DECODE.takes(len(held[0])):
        return DECODE.untyped_from(held)
    return msgspec.json.decode(held.pop())


async def json_body(req: web.Request, empty: Any) -> Any:
    """msgspec.json.decode of the body (raising what it raises), or `empty` if
    there is none; the request keeps no reference to the body afterwards.
    Off the event loop when large (sandboxd.api.inbound.offload)."""
    held = [await take_body(req)]
    n = len(held[0])
    if not n:
        return empty
    return await offload(n, _decode, held)
