"""HTTP per-request cost of one tree against another (e.g. a branch against its base),
measured in the same run: both daemons up at once, rounds alternating, so the
machine's noise falls on both.  The native API with CORS on in the new tree
(`[http] cors_origins`), requests carrying an Origin header (or not: --no-origin).

    git -C /work/main worktree add --detach /tmp/base lead
    .venv/bin/python benchmarks/http_overhead.py /tmp/base . [--rounds 20] [--no-origin]
"""

from __future__ import annotations

import argparse
import http.client
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchlib import free_port

ORIGIN = "https://bench.example"


def start(tree: Path, name: str, cors: bool) -> tuple[subprocess.Popen[bytes], int]:
    d, port = tempfile.mkdtemp(prefix=f"sandboxd-bench-http-{name}-"), free_port()
    env = {**os.environ, "PYTHONPATH": str(tree), "SANDBOXD_SELFTEST": "false", "SANDBOXD_JOB_STORE": f"{d}/j.sqlite3"}
    if cors:
        env["SANDBOXD_HTTP_CORS_ORIGINS"] = f'["{ORIGIN}"]'
    cmd = [sys.executable, "-m", "sandboxd", "serve", "--config", "/dev/null", "--instance", f"bench-http-{name}"]
    cmd += ["--socket", f"{d}/s.sock", "--http", f"127.0.0.1:{port}", "--pool-size", "1", "--pid-file", f"{d}/p.pid"]
    proc = subprocess.Popen(cmd, cwd=tree, env=env, stdout=subprocess.DEVNULL, stderr=open(f"{d}/log", "wb"))  # noqa: SIM115
    wait_ready(proc, port, f"{name}: the daemon did not start (log in {d})")
    return proc, port


def wait_ready(proc: subprocess.Popen[bytes], port: int, failed: str) -> None:
    """Until /readyz says 200 (a minute at most: then the daemon is killed, and `failed` said)."""
    for _ in range(600):
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            c.request("GET", "/readyz")
            if c.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise SystemExit(failed)


def one_round(port: int, n: int, origin: bool) -> float:
    c = http.client.HTTPConnection("127.0.0.1", port)
    headers = {"Origin": ORIGIN} if origin else {}
    t = time.perf_counter()
    for _ in range(n):
        c.request("GET", "/v1/languages", headers=headers)
        c.getresponse().read()
    return (time.perf_counter() - t) / n


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("base", type=Path)
    ap.add_argument("new", type=Path)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--no-origin", action="store_true")
    a = ap.parse_args()
    (pb, portb), (pn, portn) = start(a.base.resolve(), "base", False), start(a.new.resolve(), "new", True)
    try:
        base, new = [], []
        for _ in range(a.rounds):
            base.append(one_round(portb, 500, not a.no_origin))
            new.append(one_round(portn, 500, not a.no_origin))
        mb, mn = statistics.median(base), statistics.median(new)
        print(f"GET /v1/languages, median per request: base {mb * 1e6:.0f} us, new {mn * 1e6:.0f} us, "
              f"ratio {mn / mb:.3f} ({'no ' if a.no_origin else ''}Origin header)")  # fmt: skip
    finally:
        for p in (pb, pn):
            p.terminate()
            p.wait()


if __name__ == "__main__":
    main()
