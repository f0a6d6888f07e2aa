"""Real processes for fleet tests: redis-server, `sandboxd coordinator` and a
fleet of both with host daemons."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import msgspec
import redis
from daemon_util import Daemon, Served, free_port


class Redis:
    """A redis-server of our own (never the host's), persisting every write
    (appendfsync always) so a restart must not lose acknowledged jobs."""

    def __init__(self) -> None:
        if shutil.which("redis-server") is None:
            raise RuntimeError("redis-server is not installed: run scripts/install.sh")
        self.dir = Path(tempfile.mkdtemp(prefix="sandboxd-redis-"))
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        args = [
            "redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
            "--appendonly", "yes", "--appendfsync", "always", "--save", "", "--daemonize", "no",
            "--logfile", str(self.dir / "redis.log"),
        ]  # fmt: skip
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while True:
            try:
                if self.client().ping():
                    return
            except redis.exceptions.RedisError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start: {(self.dir / 'redis.log').read_text()}")
            time.sleep(0.05)

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, socket_timeout=5)

    def kill(self) -> None:
        """kill -9: whatever it acknowledged must be in the AOF."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> None:
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


class Coordinator(Served):
    def __init__(self, fleet: str, env: dict[str, str] | None = None, config: Path | None = None) -> None:
        super().__init__("sandboxd-coord-")
        self.sock = str(self.dir / "coordinator.sock")
        args = [
            sys.executable, "-m", "sandboxd", "coordinator", "--config", str(config or "/dev/null"), "--fleet", fleet,
            "--socket", self.sock, "--http", f"127.0.0.1:{self.port}",
        ]  # fmt: skip
        self._launch(args, {**os.environ, **(env or {})}, "coordinator", 30)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        rc = super().stop(sig, timeout)
        shutil.rmtree(self.dir, ignore_errors=True)
        return rc


class Host(NamedTuple):
    """A host daemon of a Fleet: its instance name, boxes and environment
    (SANDBOXD_FLEET is added: the fleet's Redis)."""

    instance: str
    pool_size: int = 1
    env: dict[str, str] = {}


class Fleet:
    """A redis-server, host daemons and `replicas` coordinators, in that order;
    if any fails to start, what did is stopped.  `ready` (given the first
    coordinator's GET /v1/hosts) is waited for after each coordinator start."""

    def __init__(
        self,
        hosts: dict[str, Host],
        coord_env: dict[str, str],
        config: Path | None = None,
        headers: dict[str, str] | None = None,
        ready: Callable[[list[dict[str, Any]]], bool] | None = None,
        replicas: int = 1,
    ) -> None:
        self.redis = Redis()
        self.specs = hosts
        self.hosts: dict[str, Daemon] = {}
        self.coords: list[Coordinator] = []
        self.coord_env, self.config, self.headers, self.ready = coord_env, config, headers or {}, ready
        try:
            for name in hosts:
                self.start_host(name)
            for i in range(replicas):
                self.start_coordinator(i)
        except BaseException:
            self.stop()
            raise

    @property
    def coord(self) -> Coordinator | None:
        """The first coordinator (the only one of a one-replica fleet)."""
        return self.coords[0] if self.coords else None

    @property
    def host(self) -> Daemon:
        """The host of a one-host fleet."""
        (h,) = self.hosts.values()
        return h

    def start_host(self, name: str) -> None:
        """Host `name` (again: after a test killed it)."""
        h = self.specs[name]
        self.hosts[name] = Daemon(h.instance, h.pool_size, env={**h.env, "SANDBOXD_FLEET": self.redis.url})

    def start_coordinator(self, i: int = 0) -> None:
        """Coordinator i (again: after a test stopped it)."""
        c = Coordinator(self.redis.url, self.coord_env, config=self.config)
        if i < len(self.coords):
            self.coords[i] = c
        else:
            self.coords.append(c)
        if self.ready is not None:
            self.wait_hosts(self.ready)

    def wait_hosts(self, ready: Callable[[list[dict[str, Any]]], bool], timeout: float = 20) -> list[dict[str, Any]]:
        assert self.coord is not None
        deadline = time.monotonic() + timeout
        while True:
            req = urllib.request.Request(self.coord.http + "/v1/hosts", headers=self.headers)
            with urllib.request.urlopen(req, timeout=10) as r:
                hosts: list[dict[str, Any]] = json.loads(r.read())
            if ready(hosts):
                return hosts
            assert time.monotonic() < deadline, f"hosts listed: {hosts}"
            time.sleep(0.1)

    def api(self, method: str, path: str, body: Any = None, coord: int = 0, timeout: float = 60) -> tuple[int, Any]:
        """A JSON request to coordinator `coord`: (status, decoded body)."""
        data = None if body is None else msgspec.json.encode(body)
        req = urllib.request.Request(
            self.coords[coord].http + path,
            data=data,
            method=method,
            headers={"Content-Type": "application/json", **self.headers},
        )
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, msgspec.json.decode(r.read())
        except urllib.error.HTTPError as e:
            return e.code, msgspec.json.decode(e.read())

    def start(self, body: dict[str, Any], coord: int = 0, what: str = "runs") -> str:
        st, res = self.api("POST", f"/v1/{what}?wait=false", body, coord)
        assert st == 202, res
        return str(res["job"])

    def wait(self, job: str, coord: int = 0, timeout: float = 60) -> dict[str, Any]:
        """The job once final, or as it is after `timeout` s."""
        deadline = time.monotonic() + timeout
        while True:
            st, res = self.api("GET", f"/v1/jobs/{job}?wait={max(0.1, deadline - time.monotonic()):.1f}", coord=coord)
            assert st == 200, res
            if res["state"] not in ("queued", "running") or time.monotonic() > deadline:
                return dict(res)

    def wait_state(self, job: str, state: str, timeout: float = 20) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            _, res = self.api("GET", f"/v1/jobs/{job}")
            if res.get("state") == state:
                return dict(res)
            assert time.monotonic() < deadline, res
            time.sleep(0.05)

    def drain(self, *names: str, on: bool = True) -> None:
        for n in names:
            st, res = self.api("POST", f"/v1/hosts/{n}/{'drain' if on else 'undrain'}")
            assert st == 200 and res["drained"] is on, res
        # A host stops claiming at once (the claim script checks the set);
        # /v1/hosts shows it from the same set.

    def r(self) -> redis.Redis:
        return self.redis.client()

    def stop(self) -> None:
        for c in self.coords:
            c.stop()
        for h in self.hosts.values():
            h.stop()
        self.redis.stop()


def listing(names: set[str]) -> Callable[[list[dict[str, Any]]], bool]:
    """A `ready` for Fleet.wait_hosts: exactly these hosts listed."""
    return lambda hosts: {h["id"] for h in hosts} == names


class ReplyCutter:
    """A loopback TCP proxy in front of a redis-server that reproduces "the
    write happened, the reply was lost": once armed, the first command that
    `match`es is forwarded, and when Redis answers it (not with an error such
    as NOSCRIPT, which means it did not run), `on_reply` runs (kill Redis) and
    the reply is dropped with the connection.  Everything else passes through."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.url = f"redis://127.0.0.1:{self.sock.getsockname()[1]}/0"
        self.match: Callable[[bytes], bool] | None = None  # armed
        self.want: Callable[[bytes], bool] | None = None
        self.on_reply: Callable[[], None] = lambda: None
        self.cut = threading.Event()
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def arm(self, match: Callable[[bytes], bool], on_reply: Callable[[], None]) -> None:
        with self.lock:
            self.match = self.want = match
            self.on_reply = on_reply
            self.cut.clear()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return  # closed
            try:
                upstream = socket.create_connection(("127.0.0.1", self.redis.port), timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()  # Redis is down: the coordinator sees a refused connection
                continue
            pending = threading.Event()  # this connection carries the armed command
            threading.Thread(target=self._up, args=(client, upstream, pending), daemon=True).start()
            threading.Thread(target=self._down, args=(upstream, client, pending), daemon=True).start()

    def _up(self, src: socket.socket, dst: socket.socket, pending: threading.Event) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(1 << 16):
                with self.lock:
                    if self.match is not None and self.match(data):
                        self.match = None
                        pending.set()  # before forwarding: the reply cannot overtake it
                dst.sendall(data)
        self._close(src, dst)

    def _down(self, src: socket.socket, dst: socket.socket, pending: threading.Event) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(1 << 16):
                if pending.is_set():
                    if data.startswith(b"-"):  # an error reply (NOSCRIPT): the command did not run
                        with self.lock:
                            self.match = self.want  # armed again for the retry
                        pending.clear()
                    else:
                        self.on_reply()
                        self.cut.set()
                        break
                dst.sendall(data)
        self._close(src, dst)

    @staticmethod
    def _close(*socks: socket.socket) -> None:
        for s in socks:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def close(self) -> None:
        self.sock.close()


def is_enqueue(data: bytes) -> bool:
    """The fleet script's enqueue call (not SCRIPT LOAD, whose text mentions both words)."""
    return b"EVALSHA" in data and b"\r\nenqueue\r\n" in data
