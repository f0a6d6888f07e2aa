"""`sandboxd coordinator`: the process start-up of a fleet coordinator.

The Coordinator (sandboxd.fleet.coordinator) is the fleet's Frontend over
Redis; this wires it to the listeners every server shares
(sandboxd.app.listeners), registers the compat APIs (sandboxd.compat.kinds)
and adds the routes only a coordinator has.  Nothing here or below loads
sandbox, engine or rootfs code: a coordinator runs no box (checked by
import-linter's contracts in pyproject.toml and by
tests/app/test_layers.py::test_coordinator_process_loads_no_sandbox_code).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path

from aiohttp import web

from sandboxd.api.httpserver import reply
from sandboxd.app.listeners import serve_frontend
from sandboxd.compat import kinds as compat_kinds
from sandboxd.config import Config
from sandboxd.fleet.coordinator import Coordinator
from sandboxd.fleet.files import RedisFiles
from sandboxd.fleet.sessionproxy import SessionProxy
from sandboxd.fleet.sessionproxy import add_route as add_session_route
from sandboxd.fleet.store import FleetStore
from sandboxd.fleet.tenants import FleetTenants, today

__all__ = ["routes", "serve"]
log = logging.getLogger(__name__)


def routes(coord: Coordinator, cfg: Config | None = None) -> Callable[[web.Application], None]:
    """The HTTP routes only a coordinator has: its hosts, draining them, and
    live sessions proxied to a host (sandboxd.fleet.sessionproxy)."""
    cfg = cfg or Config()
    token = cfg.http.token
    proxy = SessionProxy(
        coord.hosts,
        cfg.sessions,
        token,
        cfg.sessions.host_token or token,
        coord.metrics,
        lambda: coord.tenants,
        coord.store.tenant_running,
        lambda name: coord.store.tenant_cpu_today(name, today()),
    )
    coord.sessions = proxy  # (Piston's app finds its connect here: sandboxd.compat.piston.http)

    async def list_hosts(req: web.Request) -> web.Response:
        return reply(req, await coord.hosts())

    async def drain(req: web.Request) -> web.Response:
        return reply(req, await coord.set_drained(req.match_info["host"], True))

    async def undrain(req: web.Request) -> web.Response:
        return reply(req, await coord.set_drained(req.match_info["host"], False))

    def add(app: web.Application) -> None:
        app.router.add_get("/v1/hosts", list_hosts)
        app.router.add_post("/v1/hosts/{host}/drain", drain)
        app.router.add_post("/v1/hosts/{host}/undrain", undrain)
        add_session_route(app, proxy)

    return add


async def serve(cfg: Config) -> int:
    fleet = cfg.fleet
    if not fleet.url:
        raise ValueError("fleet.url: the coordinator needs the fleet's Redis URL ([fleet] url or SANDBOXD_FLEET)")
    compat_kinds.register()  # Judge0 and Piston: their job kinds and HTTP apps
    store = FleetStore(fleet.url, fleet.prefix, cfg.jobs.results_ttl)
    coord = Coordinator(
        store,
        aging=cfg.engine.aging,
        queue_depth=fleet.queue_depth,
        max_attempts=fleet.max_attempts,
        lease=fleet.lease,
        callback_allow_private=cfg.jobs.callback_allow_private,
    )
    fc = cfg.files
    coord.files = RedisFiles(store.redis, store.keys.prefix, fc.fleet_max_bytes, fc.max_file, fc.fleet_keep)
    tc = cfg.tenants  # (the same [tenants] as a daemon's; limits kept fleet-wide: sandboxd.fleet.tenants)
    coord.use_tenants(
        FleetTenants(Path(tc.file or Path(cfg.state_dir) / "tenants" / f"{cfg.instance}.json"), tc.unnamed_weight)
    )
    await coord.start()

    async def stopping() -> None:
        # Jobs live in Redis, so stopping loses none; clients waiting here get
        # drain_timeout to receive their results, then reconnect elsewhere.
        coord.draining = True
        t0 = time.monotonic()
        while coord.events.waiters and time.monotonic() - t0 < cfg.drain_timeout:
            await asyncio.sleep(0.1)

    try:
        await serve_frontend(
            cfg,
            coord,
            what=f"coordinator for the fleet at {fleet.url}",
            stopping=stopping,
            extra_routes=routes(coord, cfg),
        )
    finally:
        await coord.close()
        log.info("stopped")
    return 0
