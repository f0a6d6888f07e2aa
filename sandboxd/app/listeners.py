"""What every sandboxd server process shares: logging, systemd's notify protocol,
the pid file, and the listeners (Unix socket, HTTP, the compat APIs' own HTTP
listeners) in front of a Frontend until SIGTERM.

Both servers use it: `sandboxd serve` (sandboxd.app.daemon, a host daemon's
Service over the engine) and `sandboxd coordinator` (sandboxd.app.coordinator,
the fleet's Coordinator over Redis).  It imports nothing of the engine, so the
coordinator process loads no sandbox code.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from sandboxd.api import httpserver, unixserver, unixsocket
from sandboxd.api.decodepool import DECODE
from sandboxd.api.httpguard import GuardedSite
from sandboxd.api.inbound import OFFLOAD_WORKERS, Inbound
from sandboxd.api.wire import Frontend
from sandboxd.config import Config, HttpSettings
from sandboxd.hostlock import HostLock

log = logging.getLogger("sandboxd")


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        d = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            d["exc"] = self.formatException(record.exc_info)
        return json.dumps(d)


def setup_logging(cfg: Config) -> None:
    h = logging.StreamHandler(sys.stderr)
    if cfg.log.format == "json":
        h.setFormatter(_JsonFormatter())
    else:
        h.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [h]
    root.setLevel(cfg.log.level.upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def sd_notify(state: str) -> None:
    """systemd's notify protocol: one datagram to $NOTIFY_SOCKET (no-op elsewhere)."""
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
        s.sendto(state.encode(), addr)


def _watchdog_interval() -> float | None:
    usec = os.environ.get("WATCHDOG_USEC")
    if not usec or os.environ.get("WATCHDOG_PID", str(os.getpid())) != str(os.getpid()):
        return None
    return int(usec) / 2e6


async def serve_frontend(
    cfg: Config,
    frontend: Frontend,
    *,
    what: str,
    stopping: Callable[[], Awaitable[None]],
    extra_routes: Callable[[web.Application], None] | None = None,
    reload: Callable[[], None] | None = None,
    t0: float | None = None,
    pid_file: Path | None = None,
) -> None:
    """Serve `frontend` on the Unix socket and HTTP until SIGTERM/SIGINT, with
    systemd's notify protocol; then close the listeners and await `stopping()`.
    pid_file: written once the socket is bound, removed on exit if still ours."""
    t0 = time.monotonic() if t0 is None else t0
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if reload is not None:
        loop.add_signal_handler(signal.SIGHUP, reload)
    DECODE.start(OFFLOAD_WORKERS)  # large JSON bodies are parsed in these processes (sandboxd.api.decodepool)
    listeners = _Listeners(cfg, Inbound.from_config(cfg))  # inbound: connections and bytes being received, daemon-wide
    try:
        await listeners.start(frontend, extra_routes, pid_file)
        _log_ready(cfg, what, t0)
        sd_notify("READY=1\nSTATUS=serving")
        listeners.watchdog = _start_watchdog()
        await stop.wait()
        log.info("stopping: draining for up to %.0f s", cfg.drain_timeout)
        sd_notify("STOPPING=1\nSTATUS=draining")
        for s in listeners.servers:
            s.close()  # no new connections; open ones keep getting their replies
        await stopping()
    finally:
        await listeners.close()


class _Listeners:
    """What serve_frontend opened; close() closes whatever got opened."""

    def __init__(self, cfg: Config, inbound: Inbound) -> None:
        self.cfg = cfg
        self.inbound = inbound
        self.servers: list[asyncio.AbstractServer] = []
        self.runners: list[web.AppRunner] = []
        self.pid_lock: HostLock | None = None
        self.watchdog: asyncio.Task[None] | None = None

    async def start(
        self, frontend: Frontend, extra_routes: Callable[[web.Application], None] | None, pid_file: Path | None
    ) -> None:
        sock, http, inbound = self.cfg.socket, self.cfg.http, self.inbound
        if sock.path:
            mode = int(sock.mode, 8)
            self.servers.append(
                await unixserver.start(frontend, sock.path, mode, sock.group, http.max_body, inbound=inbound)
            )
        if pid_file is not None:
            self.pid_lock = write_pid_file(pid_file)
        for addr, app in _http_apps(self.cfg, frontend, extra_routes, inbound):
            await self._listen(addr, app)

    async def _listen(self, addr: str, app: web.Application) -> None:
        host, _, port = addr.rpartition(":")
        # keepalive_timeout is aiohttp's own idle knob; GuardedSite adds header
        # deadlines and connection caps (sandboxd.api.httpguard).
        runner = web.AppRunner(app, access_log=None, keepalive_timeout=self.cfg.http.idle_timeout)
        self.runners.append(runner)
        await runner.setup()
        try:
            await GuardedSite(runner, host.strip("[]"), int(port), self.inbound).start()
        except OSError as e:
            reason = "in use (another sandboxd?)" if e.errno == errno.EADDRINUSE else (e.strerror or str(e))
            raise RuntimeError(f"cannot listen on {addr}: {reason}; choose another address") from None

    async def close(self) -> None:
        for runner in self.runners:
            await runner.cleanup()
        for s in self.servers:
            s.close()
        if self.cfg.socket.path:
            unixsocket.unlink_own(self.cfg.socket.path)
        if self.pid_lock is not None:
            release_pid_file(self.pid_lock)
        if self.watchdog is not None:
            self.watchdog.cancel()
        DECODE.stop()


def _http_apps(
    cfg: Config, frontend: Frontend, extra_routes: Callable[[web.Application], None] | None, inbound: Inbound
) -> list[tuple[str, web.Application]]:
    """(address, app) of every HTTP listener the configuration asks for."""
    http = cfg.http
    apps: list[tuple[str, web.Application]] = []
    if http.listen:
        apps.append(
            (
                http.listen,
                httpserver.make_app(
                    frontend,
                    http.token,
                    http.max_body,
                    {"judge0": http.judge0_prefix, "piston": http.piston_prefix},
                    extra_routes,
                    inbound=inbound,
                    cors_origins={"": http.cors_origins, "judge0": http.judge0_cors_origins},
                    api_options=_api_options(http),
                ),
            )
        )
    own = ((http.judge0_listen, "judge0", http.judge0_cors_origins), (http.piston_listen, "piston", http.cors_origins))
    for addr, api, origins in own:
        if addr:
            options = _api_options(http).get(api)
            app = httpserver.make_api_app(frontend, api, http.token, http.max_body, inbound, origins, options)
            apps.append((addr, app))
    return apps


def _api_options(http: HttpSettings) -> dict[str, dict[str, Any]]:
    """Each registered API's own settings, as its factory's keyword arguments."""
    return {"piston": {"accept_text_plain": http.piston_accept_text_plain}}


def _log_ready(cfg: Config, what: str, t0: float) -> None:
    # One line with everything an operator checks first (tests/vm parse it).
    sock, http = cfg.socket, cfg.http
    elapsed = time.monotonic() - t0
    own = "".join(
        f", {api} {addr}" for addr, api in ((http.judge0_listen, "judge0"), (http.piston_listen, "piston")) if addr
    )
    log.info("ready in %.2f s: %s, socket %s, http %s%s", elapsed, what, sock.path or "off", http.listen or "off", own)


def _start_watchdog() -> asyncio.Task[None] | None:
    """systemd's watchdog (WatchdogSec=): a ping at half its interval."""
    interval = _watchdog_interval()
    if not interval:
        return None

    async def ping() -> None:
        while True:
            sd_notify("WATCHDOG=1")
            await asyncio.sleep(interval)

    return asyncio.ensure_future(ping())


def write_pid_file(path: Path) -> HostLock:
    """Our pid in `path`, under an flock held for our lifetime: a pid file
    whose lock is held belongs to a live daemon (a pid alone may be reused)."""
    lock = HostLock.try_path(path)
    if lock is None:
        held = path.read_text(errors="replace").strip() if path.exists() else "?"
        raise RuntimeError(f"pid file {path}: held by live process {held}; choose another `pid_file` or `run_dir`")
    lock.write(f"{os.getpid()}\n")
    return lock


def release_pid_file(lock: HostLock) -> None:
    # Removed only if it still holds our pid (the lock makes that certain; the check keeps it obvious).
    lock.release(remove=lock.read().strip() == str(os.getpid()))
