"""`sandboxd serve`: one uvloop process serving the Unix socket and HTTP."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from pathlib import Path

from sandboxd import __version__
from sandboxd.api import unixsocket
from sandboxd.app.listeners import serve_frontend
from sandboxd.app.stallwatch import StallWatch
from sandboxd.compat import kinds as compat_kinds
from sandboxd.config import Config
from sandboxd.engine.engine import Engine, EngineConfig
from sandboxd.filestore import FileStore
from sandboxd.fleet.executor import ServiceExecutor
from sandboxd.fleet.files import RedisFiles
from sandboxd.fleet.host import HostSettings, HostWorker
from sandboxd.fleet.store import FleetStore
from sandboxd.fleet.tenants import SessionBills
from sandboxd.jobs.files import HostFiles
from sandboxd.jobs.service import Service
from sandboxd.jobs.store import JobStore, default_path
from sandboxd.jobs.tenants import Tenants

log = logging.getLogger("sandboxd")


def fleet_host_id(cfg: Config) -> str:
    if cfg.fleet.host_id:
        return cfg.fleet.host_id
    name = socket.gethostname()
    return name if cfg.instance == "default" else f"{name}/{cfg.instance}"


async def serve(cfg: Config) -> int:
    t0 = time.monotonic()
    watch = StallWatch(cfg.log.stall_ms) if cfg.log.stall_ms else None
    if watch is not None:
        watch.start()
    try:
        return await _serve(cfg, t0)
    finally:
        if watch is not None:
            watch.close()


async def _serve(cfg: Config, t0: float) -> int:
    compat_kinds.register()  # Judge0 and Piston: their job kinds and HTTP apps
    if cfg.socket.path:
        unixsocket.check_free(cfg.socket.path)  # before the pool is built: refuse at once
    engine = await Engine.start(EngineConfig.from_config(cfg))
    worker: HostWorker | None = None
    bills: SessionBills | None = None
    try:
        if cfg.engine.selftest:
            failed = await engine.selftest()
            if not engine.languages:
                raise RuntimeError(f"no language passed its self-test: {failed}")
        jc = cfg.jobs
        jobs = JobStore(jc.store or default_path(Path(cfg.state_dir), cfg.instance), jc.results_ttl, jc.store_max_bytes)
        fc = cfg.files
        files_dir = Path(fc.dir or Path(cfg.state_dir) / "files" / cfg.instance)
        files = HostFiles(FileStore(files_dir, fc.max_bytes, fc.max_file))
        svc = Service(
            engine,
            results_ttl=jc.results_ttl,
            callback_allow_private=jc.callback_allow_private,
            store=jobs,
            sessions=cfg.sessions,
            files=files,
        )
        svc.open()
        tc = cfg.tenants
        svc.use_tenants(
            Tenants(Path(tc.file or Path(cfg.state_dir) / "tenants" / f"{cfg.instance}.json"), tc.unnamed_weight)
        )
        reloads: set[asyncio.Task[list[str]]] = set()

        def reload() -> None:
            # SIGHUP: pick up rootfs trees switched by `sandboxd rootfs build`.
            t = asyncio.ensure_future(engine.reload_rootfs())
            reloads.add(t)
            t.add_done_callback(reloads.discard)

        if cfg.fleet.url:
            store = FleetStore(cfg.fleet.url, cfg.fleet.prefix, jc.results_ttl)
            files.remote = RedisFiles(store.redis, store.keys.prefix, fc.fleet_max_bytes, fc.max_file, fc.fleet_keep)
            info = {"address": cfg.http.listen, "instance": cfg.instance, "version": __version__}
            # Where a coordinator proxies live sessions to (sandboxd.fleet.sessionproxy).
            sessions_url = cfg.sessions.advertise or (f"http://{cfg.http.listen}" if cfg.http.listen else "")
            if sessions_url:
                info["sessions"] = sessions_url
                if cfg.http.piston_prefix:  # (Piston's connect on the same listener; its own listener is not proxied)
                    info["piston"] = sessions_url.rstrip("/") + cfg.http.piston_prefix.rstrip("/") + "/api/v2/connect"
            worker = HostWorker(
                store, ServiceExecutor(svc), HostSettings.from_config(cfg.fleet, fleet_host_id(cfg), info)
            )
            await worker.start()
            bills = SessionBills(store)
            svc.sessions.bill = bills

        async def stopping() -> None:
            if worker is not None:
                # Fleet jobs first: finished or handed back, so the fleet re-queues
                # them at once instead of waiting for a lease to run out.
                await worker.leave(cfg.drain_timeout)
            await svc.drain(cfg.drain_timeout)
            await svc.close()
            if worker is not None:  # (after the drain: the sessions it ended bill their tenants)
                if bills is not None:
                    await bills.close()
                await worker.store.close()

        what = "instance {}, {} cgroups, pool {}{}".format(
            cfg.instance,
            f"v{engine.backend.version}" if engine.backend else "?",
            cfg.engine.pool_size,
            f", fleet {cfg.fleet.url} as host {fleet_host_id(cfg)}" if cfg.fleet.url else "",
        )
        pid_file = Path(cfg.pid_file or Path(cfg.run_dir) / "sandboxd.pid")
        await serve_frontend(
            cfg, svc, what=what, stopping=stopping, reload=reload, t0=t0, pid_file=pid_file, budget=engine.budget
        )
    finally:
        await engine.close()
        log.info("stopped")
    return 0
