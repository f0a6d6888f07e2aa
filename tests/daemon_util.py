"""Start real `sandboxd serve` processes for tests."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import msgspec


def json_http(d: Served, method: str, path: str, body: Any = None, raw: bytes | None = None) -> tuple[int, Any]:
    """(status, decoded JSON or None) of one request to a server's HTTP listener: `body` as
    JSON, or `raw` bytes as they are (labelled JSON either way)."""
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    req = urllib.request.Request(d.http + path, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


SUM_C = '#include <stdio.h>\nint main(void){long a,b;scanf("%ld %ld",&a,&b);printf("%ld\\n",a+b);}\n'


def sum_tests(tmp: Path, n: int, wrong: int) -> tuple[Path, Path]:
    """(a `sandboxd submit` tests directory, sum.c): tests 1..n read `i i` and expect 2i,
    except test `wrong`, which expects 0."""
    tests = tmp / "tests"
    tests.mkdir()
    for i in range(1, n + 1):
        (tests / f"{i}.in").write_text(f"{i} {i}\n")
        (tests / f"{i}.out").write_text(f"{2 * i if i != wrong else 0}\n")
    src = tmp / "sum.c"
    src.write_text(SUM_C)
    return tests, src


def frame(obj: Any) -> bytes:
    """One frame of the Unix-socket protocol (docs/protocol.md): a 4-byte
    big-endian length, then msgpack (bytes are sent as they are)."""
    data = obj if isinstance(obj, bytes) else msgspec.msgpack.encode(obj)
    return struct.pack(">I", len(data)) + data


def recv_frame(s: socket.socket) -> Any:
    """The next frame the daemon sends on `s`, decoded."""
    (n,) = struct.unpack(">I", s.recv(4, socket.MSG_WAITALL))
    return msgspec.msgpack.decode(s.recv(n, socket.MSG_WAITALL))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Served:
    """A `sandboxd serve` or `sandboxd coordinator` process on a free loopback port."""

    def __init__(self, prefix: str) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix=prefix))
        self.port = free_port()
        self.http = f"http://127.0.0.1:{self.port}"
        self.log = open(self.dir / "log", "w+b")  # noqa: SIM115 - closed in stop()

    def _launch(self, args: list[str], env: dict[str, str], what: str, timeout: float) -> None:
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + timeout
        while not self.ready():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{what} did not start:\n{self.output()}")
            time.sleep(0.05)

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.http}/readyz", timeout=1) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def output(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read().decode(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait()
        self.log.close()
        return rc


class Daemon(Served):
    def __init__(
        self,
        instance: str,
        pool_size: int = 2,
        env: dict[str, str] | None = None,
        selftest: bool = False,
        config: Path | None = None,
        **flags: Any,
    ) -> None:
        super().__init__(f"sandboxd-{instance}-")
        self.sock = str(self.dir / "sandboxd.sock")
        args = [
            sys.executable, "-m", "sandboxd", "serve", "--config", str(config or "/dev/null"),
            "--instance", instance, "--socket", self.sock, "--http", f"127.0.0.1:{self.port}",
            "--pool-size", str(pool_size), "--pid-file", str(self.dir / "sandboxd.pid"),
        ]  # fmt: skip
        for k, v in flags.items():
            args += [f"--{k.replace('_', '-')}", str(v)]
        # Language self-tests cost seconds per start-up; one test daemon checks them.
        # The job store in the daemon's own directory, unless a test keeps one across daemons.
        store = {"SANDBOXD_JOB_STORE": str(self.dir / "jobs.sqlite3")}
        env = {**store, **os.environ, "SANDBOXD_SELFTEST": "true" if selftest else "false", **(env or {})}
        self._launch(args, env, "daemon", 120)


class CallbackSink:
    """A loopback HTTP server recording the (method, body) of every callback it gets."""

    def __init__(self) -> None:
        self.got: list[tuple[str, bytes]] = []
        got = self.got

        class Handler(BaseHTTPRequestHandler):
            def _record(self) -> None:
                got.append((self.command, self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(204)
                self.end_headers()

            do_POST = do_PUT = _record

            def log_message(self, *args: object) -> None:
                pass

        self.srv = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.srv.server_port}/done"
        threading.Thread(target=self.srv.serve_forever, daemon=True).start()

    def wait(self, n: int, timeout: float = 30) -> list[tuple[str, bytes]]:
        """The first n callbacks (fewer if they do not come in time)."""
        deadline = time.monotonic() + timeout
        while len(self.got) < n and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.got[:n]

    def close(self) -> None:
        self.srv.shutdown()
        self.srv.server_close()


class Restartable(Daemon):
    """A daemon that can be started again with the same instance, socket and port."""

    def _launch(self, args: list[str], env: dict[str, str], what: str, timeout: float) -> None:
        self.args, self.env = args, env
        super()._launch(args, env, what, timeout)

    def restart(self) -> None:
        self.log = open(self.dir / "log", "a+b")  # noqa: SIM115 - closed in stop()
        super()._launch(self.args, self.env, "daemon", 120)

    def runs(self) -> int:
        """Runs this daemon process executed (its metrics start at 0)."""
        with urllib.request.urlopen(self.http + "/metrics") as r:
            text = r.read().decode()
        return sum(int(float(n)) for n in re.findall(r"^sandboxd_run_seconds_count\{[^}]*\} (\S+)$", text, re.M))
