"""CORS: which browser pages may call an HTTP API, answered before auth.

A small middleware of our own rather than aiohttp-cors: that library answers
preflights from OPTIONS routes it adds to the router, so they would run after
our auth middleware (a preflight carries no credentials: it would get 401),
it knows nothing of our sub-apps under prefixes with a policy each (Judge0's
allows every origin, the native API only the configured ones), and it adds
nothing to the replies our middlewares make themselves (401, 503, 413).

`Policy` is one API's rule; `install(app, default, by_prefix)` puts the
preflight middleware first and a response hook that adds the headers to every
reply of the app, its sub-apps and its errors (a 404 and a 405 included).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from aiohttp import web

# What a page may send: the bearer token, the body's type, the idempotency key
# (Judge0's own auth headers are added by its policy).
ALLOW_HEADERS = ("Authorization", "Content-Type", "Accept", "Idempotency-Key")
# What a page may read: back-off advice and the new resource's address.
EXPOSE_HEADERS = (
    "Retry-After",
    "RateLimit",
    "RateLimit-Policy",
    "RateLimit-Limit",
    "RateLimit-Remaining",
    "RateLimit-Reset",
    "Location",
)
METHODS = "GET, HEAD, POST, PUT, DELETE"
MAX_AGE = "600"  # seconds a browser may cache a preflight's answer


@dataclass(frozen=True)
class Policy:
    """One API's CORS rule.  origins: exact origins, or "*" (any; then no page gets
    credentials, which no API here uses: tokens travel in headers)."""

    origins: frozenset[str] = frozenset()
    allow_headers: tuple[str, ...] = ALLOW_HEADERS

    @classmethod
    def of(cls, origins: Sequence[str], extra_headers: Sequence[str] = ()) -> Policy:
        return cls(frozenset(origins), (*ALLOW_HEADERS, *extra_headers))

    def allow_origin(self, origin: str | None) -> str | None:
        """The Access-Control-Allow-Origin value for this origin; None: not allowed."""
        if not origin or not self.origins:
            return None
        if "*" in self.origins:
            return "*"
        return origin if origin in self.origins else None


NONE = Policy()
_POLICIES: web.AppKey[tuple[Policy, tuple[tuple[str, Policy], ...]]] = web.AppKey("cors")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _policy(request: web.Request) -> Policy:
    default, by_prefix = request.config_dict[_POLICIES]  # (the main app's, from a sub-app too)
    for prefix, policy in by_prefix:
        if request.path == prefix or request.path.startswith(prefix + "/"):
            return policy
    return default


def policy(request: web.Request) -> Policy:
    """The CORS policy of the API a request is for (WebSocket origins check it too)."""
    return _policy(request)


def is_preflight(request: web.Request) -> bool:
    return (
        request.method == "OPTIONS"
        and "Origin" in request.headers
        and "Access-Control-Request-Method" in request.headers
    )


@web.middleware
async def preflight(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A preflight is answered here, before auth and routing: it carries no
    credentials by design.  A disallowed origin gets 204 without allow headers
    (the browser then refuses the call; nothing about the API is told)."""
    if not is_preflight(request):
        return await handler(request)
    policy = _policy(request)
    headers = {"Vary": "Origin, Access-Control-Request-Method, Access-Control-Request-Headers"}
    allowed = policy.allow_origin(request.headers.get("Origin"))
    if allowed is not None:
        headers.update(
            {
                "Access-Control-Allow-Origin": allowed,
                "Access-Control-Allow-Methods": METHODS,
                "Access-Control-Allow-Headers": ", ".join(policy.allow_headers),
                "Access-Control-Max-Age": MAX_AGE,
            }
        )
    return web.Response(status=204, headers=headers)


async def _on_prepare(request: web.Request, response: web.StreamResponse) -> None:
    if is_preflight(request) or "Access-Control-Allow-Origin" in response.headers:
        return
    policy = _policy(request)
    if not policy.origins:
        return
    if "*" not in policy.origins:
        response.headers.add("Vary", "Origin")  # the reply differs by origin: caches must know
    allowed = policy.allow_origin(request.headers.get("Origin"))
    if allowed is not None:
        response.headers["Access-Control-Allow-Origin"] = allowed
        response.headers["Access-Control-Expose-Headers"] = ", ".join(EXPOSE_HEADERS)


def install(app: web.Application, default: Policy, by_prefix: Sequence[tuple[str, Policy]] = ()) -> None:
    """CORS on an app (not yet started): `default` for its own routes, a policy per
    mounted prefix.  The preflight middleware goes first, ahead of auth."""
    app[_POLICIES] = (default, tuple((p.rstrip("/"), pol) for p, pol in by_prefix if p))
    app.middlewares.insert(0, preflight)
    app.on_response_prepare.append(_on_prepare)
