"""The Judge0 API as an aiohttp application: its routes, on a Backend."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from sandboxd.compat import Backend
from sandboxd.compat.judge0 import info, submissions
from sandboxd.compat.judge0.api import Judge0
from sandboxd.compat.judge0.http import J0


def make_app(backend: Backend, **app_args: Any) -> web.Application:
    """The Judge0 API as a sub-application (mounted under `judge0_prefix`), or an app of its own
    (at the root of `judge0_http`; app_args: middlewares, client_max_size)."""
    app = web.Application(**app_args)
    app[J0] = Judge0(backend)
    r = app.router
    r.add_post("/submissions/batch", submissions.batch_create)
    r.add_get("/submissions/batch", submissions.batch_show)
    r.add_post("/submissions", submissions.create_submission)
    r.add_get("/submissions", submissions.list_submissions)
    r.add_get("/submissions/{token}", submissions.get_submission)
    r.add_delete("/submissions/{token}", submissions.delete_submission)
    r.add_get("/languages", info.languages)
    r.add_get("/languages/all", info.languages_all)
    r.add_get("/languages/{id}", info.language)
    r.add_get("/statuses", info.statuses)
    r.add_get("/about", info.about)
    r.add_get("/version", info.version)
    r.add_get("/isolate", info.isolate)
    r.add_get("/license", info.license_)
    r.add_get("/config_info", info.config_info)
    r.add_get("/system_info", info.system_info)
    r.add_get("/workers", info.workers)
    return app
