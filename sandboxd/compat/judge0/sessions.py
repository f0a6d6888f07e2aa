"""Judge0's POST /authenticate and POST /authorize (its SessionsController).

Judge0 has two secrets: AUTHN_TOKEN in `X-Auth-Token` (every route) and
AUTHZ_TOKEN in `X-Auth-User` (the admin routes).  Here both are the daemon's
one token: the auth middleware (sandboxd.api.httpserver) has already refused
a request without it (401), so /authenticate only confirms; /authorize then
wants the token in `X-Auth-User` itself (403 otherwise), as Judge0 does.

One difference: Judge0 answers /authorize 403 when no AUTHZ_TOKEN is set at
all; here, with no token set, every caller may do everything this API serves,
so it answers 200 (README "Judge0").
"""

from __future__ import annotations

import hmac

from aiohttp import web

from sandboxd.api.httpserver import TOKEN
from sandboxd.compat.judge0.tables import AUTHZ_HEADER


async def authenticate(req: web.Request) -> web.Response:
    return web.Response(status=200)  # past the middleware: the token was right, or none is set


async def authorize(req: web.Request) -> web.Response:
    token = req.config_dict[TOKEN]
    if not token:
        return web.Response(status=200)
    got = req.headers.get(AUTHZ_HEADER) or req.query.get(AUTHZ_HEADER, "")  # Judge0 reads params too
    return web.Response(status=200 if hmac.compare_digest(got.encode(), token.encode()) else 403)
