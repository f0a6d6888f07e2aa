"""Real processes for fleet tests: redis-server and `sandboxd coordinator`."""

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
from typing import Any

import redis
from daemon_util import Served, free_port


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


def http_json(base: str, method: str, path: str, body: Any = None, **headers: str) -> tuple[int, dict[str, str], Any]:
    """One HTTP call with a JSON body (if any): (status, headers, the decoded JSON reply or None)."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(
        base + path, data=data, method=method, headers={"Content-Type": "application/json", **headers}
    )
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, dict(r.headers), json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), json.loads(e.read() or b"null")


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
