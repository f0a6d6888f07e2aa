"""The Judge0 API as an aiohttp application: its routes, on a Backend."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from sandboxd.compat import Backend
from sandboxd.compat.judge0 import info, sessions, submissions
from sandboxd.compat.judge0.api import Judge0
from sandboxd.compat.judge0.http import J0, Handler


def make_app(backend: Backend, **app_args: Any) -> web.Application:
    """The Judge0 API as a sub-application (mounted under `judge0_prefix`), or an app of its own
    (at the root of `judge0_http`; app_args: middlewares, client_max_size)."""
    app = web.Application(**app_args)
    app[J0] = Judge0(backend)
    for method, path, fn in _ROUTES:
        # Rails answers a path with a trailing slash as without (a PyPI client sends one on every call).
        for p in (path, path + "/"):
            if method == "GET":
                app.router.add_get(p, fn)  # (and HEAD, as before)
            else:
                app.router.add_route(method, p, fn)
    return app


_ROUTES: tuple[tuple[str, str, Handler], ...] = (
    ("POST", "/submissions/batch", submissions.batch_create),
    ("GET", "/submissions/batch", submissions.batch_show),
    ("POST", "/submissions", submissions.create_submission),
    ("GET", "/submissions", submissions.list_submissions),
    ("GET", "/submissions/{token}", submissions.get_submission),
    ("DELETE", "/submissions/{token}", submissions.delete_submission),
    ("GET", "/languages", info.languages),
    ("GET", "/languages/all", info.languages_all),
    ("GET", "/languages/{id}", info.language),
    ("GET", "/statuses", info.statuses),
    ("GET", "/statistics", info.statistics_),
    ("GET", "/about", info.about),
    ("GET", "/version", info.version),
    ("GET", "/isolate", info.isolate),
    ("GET", "/license", info.license_),
    ("GET", "/config_info", info.config_info),
    ("GET", "/system_info", info.system_info),
    ("GET", "/workers", info.workers),
    ("POST", "/authenticate", sessions.authenticate),
    ("POST", "/authorize", sessions.authorize),
)
