"""HTTP side of tenants: who a request is from, its RateLimit-* headers, and
the admin API (GET/POST /v1/tenants, DELETE /v1/tenants/{name}).

A request's credential is what it already sends for the bearer token:
`Authorization: Bearer K`, or a plug-in API's own header carrying it as is
(Judge0's X-Auth-Token, Piston's Authorization).  The bearer token (or no
auth, when none is set) is the unnamed tenant and the admin; a tenant's key
is that tenant.  The admin API is the bearer token's only: a tenant key gets
403, and with no token set it is refused too (anyone could make tenants).
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Iterator

import msgspec
from aiohttp import web

from sandboxd.errors import error
from sandboxd.jobs.tenants import CALLER, Caller, Tenants
from sandboxd.tenancy import Tenant

BEARER = "Bearer "
# The tenant a coordinator proxies a live session for (sandboxd.fleet.sessionproxy),
# believed only from the holder of the bearer token: a host's coordinators.
BILLED_HEADER = "X-Sandboxd-Tenant"
_TENANT_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")  # (tenancy.TenantName)


def presented(request: web.Request, token_headers: Iterator[str]) -> Iterator[str]:
    """Every credential the request carries."""
    auth = request.headers.get("Authorization", "")
    if auth.startswith(BEARER):
        yield auth[len(BEARER) :]
    for h in token_headers:
        v = request.headers.get(h)
        if v:
            yield v


def billed(request: web.Request) -> str:
    """The BILLED_HEADER's tenant name, "" if absent or not a tenant name."""
    name = request.headers.get(BILLED_HEADER, "")
    return name if _TENANT_NAME.fullmatch(name) else ""


def identify(creds: list[str], token: str, tenants: Tenants, billed: str = "") -> Caller | None:
    """The caller, or None: unauthorized.  billed (BILLED_HEADER) is kept only
    for the bearer token's holder, and only when a token is set: with none,
    anyone is the admin and could bill another tenant."""
    want = token.encode()
    if token and any(hmac.compare_digest(c.encode(), want) for c in creds):
        return Caller(admin=True, billed=billed)
    for c in creds:
        st = tenants.by_key(c)
        if st is not None:
            return Caller(st)
    if not token:  # no auth configured: everyone is the unnamed tenant
        return Caller(admin=True)
    return None


def _admin(tenants: Tenants, request: web.Request) -> Tenants:
    caller = CALLER.get()
    if caller is None or not caller.admin or not request.app.get(ADMIN_TOKEN_SET, False):
        raise error("forbidden", "the tenants admin API needs the bearer token ([http] token set, and sent)")
    return tenants


TENANTS: web.AppKey[Tenants] = web.AppKey("tenants", Tenants)
ADMIN_TOKEN_SET: web.AppKey[bool] = web.AppKey("admin_token_set", bool)


async def list_tenants(request: web.Request) -> web.Response:
    tenants = _admin(request.app[TENANTS], request)
    return web.json_response({"tenants": tenants.listing()})


async def create_tenant(request: web.Request) -> web.Response:
    tenants = _admin(request.app[TENANTS], request)
    try:
        spec = msgspec.json.decode(await request.read(), type=Tenant)
    except (msgspec.ValidationError, msgspec.DecodeError) as e:
        raise error("bad_request", f"tenant: {e}") from None
    key = tenants.create(spec)
    return web.json_response({"tenant": spec.name, "key": key}, status=201)


async def delete_tenant(request: web.Request) -> web.Response:
    _admin(request.app[TENANTS], request).delete(request.match_info["name"])
    return web.json_response({"deleted": request.match_info["name"]})


def install(app: web.Application, tenants: Tenants, token: str) -> None:
    app[TENANTS] = tenants
    app[ADMIN_TOKEN_SET] = bool(token)
    app.router.add_get("/v1/tenants", list_tenants)
    app.router.add_post("/v1/tenants", create_tenant)
    app.router.add_delete("/v1/tenants/{name}", delete_tenant)
