"""Real processes for fleet tests: redis-server and `sandboxd coordinator`."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

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


class Coordinator(Served):
    def __init__(self, fleet: str, env: dict[str, str] | None = None) -> None:
        super().__init__("sandboxd-coord-")
        self.sock = str(self.dir / "coordinator.sock")
        args = [
            sys.executable, "-m", "sandboxd.cli", "coordinator", "--config", "/dev/null", "--fleet", fleet,
            "--socket", self.sock, "--http", f"127.0.0.1:{self.port}",
        ]  # fmt: skip
        self._launch(args, {**os.environ, **(env or {})}, "coordinator", 30)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        rc = super().stop(sig, timeout)
        shutil.rmtree(self.dir, ignore_errors=True)
        return rc
