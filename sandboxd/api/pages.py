"""The browser pages: playground (/), dashboard (/dashboard), API docs (/docs).

Static files shipped in the package (sandboxd/api/web/, package data), read
once and served from memory by name: only the files listed in the package
directory at start-up are reachable, so no request path ever reaches the file
system.  The pages carry no secret and run no inline script, so they are
public (the token is typed into the page and sent as a bearer header by its
scripts) under a Content-Security-Policy that allows only this origin's own
scripts, styles and connections.  No build step: plain ES modules, no
third-party code (docs/web.md says why).
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

from aiohttp import web

from sandboxd.errors import error

WEB = Path(__file__).parent / "web"
PREFIX = "/web/"  # where the assets are served
PAGES = {"/": "index.html", "/playground": "index.html", "/dashboard": "dashboard.html", "/docs": "docs.html"}
TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".txt": "text/plain; charset=utf-8",
}
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
# 'self' covers the same origin's ws:/wss: for the terminal's WebSocket.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-cache",
}


@cache
def assets() -> dict[str, tuple[bytes, str]]:
    """name -> (content, type): every servable file of the package's web folder."""
    out = {}
    for f in sorted(WEB.iterdir()):
        if f.is_file() and _NAME.match(f.name) and f.suffix in TYPES:
            out[f.name] = (f.read_bytes(), TYPES[f.suffix])
    return out


def public(path: str) -> bool:
    """A page or an asset: served without the bearer token (it holds none)."""
    return path in PAGES or path.startswith(PREFIX)


def _serve(name: str) -> web.Response:
    found = assets().get(name)
    if found is None:
        raise error("not_found", f"{PREFIX}{name}: no such page asset (there are: {', '.join(assets())})")
    body, ctype = found
    return web.Response(body=body, headers={**HEADERS, "Content-Type": ctype})


async def page(req: web.Request) -> web.Response:
    return _serve(PAGES[req.path])


async def asset(req: web.Request) -> web.Response:
    return _serve(req.match_info["name"])


def add_routes(app: web.Application) -> None:
    for path in PAGES:
        app.router.add_get(path, page)
    app.router.add_get(PREFIX + "{name}", asset)
