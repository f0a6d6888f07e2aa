"""The file store: a problem's tests sent once by hash vs inline with every submission.

N submissions (default 1000) of one problem, each with T tests (default 20)
whose inputs total SIZE bytes (default 100 MB), against a fresh `sandboxd
serve` per mode (pool 2, HTTP with msgpack bodies: bytes as bytes, no base64):

- inline: every submission carries the tests' bytes;
- hash: the tests are uploaded once (PUT /v1/files/{sha256}), every
  submission names them by hash.

Reported per mode: bytes sent to the daemon, wall time for the N submissions,
and the daemon's peak RSS (VmHWM).  The solution (bash) reads its input and
prints its size, which the expected answer checks.  Run as root:

    .venv/bin/python benchmarks/file_store.py --n 1000
    .venv/bin/python benchmarks/file_store.py --n 10        # a shared machine: say the N
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import benchlib as bl
import msgspec

MiB = 1 << 20
ROOT = Path(__file__).resolve().parents[1]
SOURCE = b"wc -c\n"


class Daemon:
    def __init__(self, tag: str) -> None:
        self.dir = tempfile.mkdtemp(prefix=f"sandboxd-bench-files-{tag}-")
        port = bl.free_port()
        self.url = f"http://127.0.0.1:{port}"
        cmd = [sys.executable, "-m", "sandboxd", "serve", "--config", "/dev/null"]
        cmd += ["--instance", f"bench-files-{tag}", "--socket", "", "--http", f"127.0.0.1:{port}", "--pool-size", "2"]
        cmd += ["--pid-file", f"{self.dir}/sandboxd.pid"]
        env = {
            **os.environ,
            "SANDBOXD_SELFTEST": "false",
            "SANDBOXD_MAX_BODY": str(256 * MiB),  # (an inline submission is ~100 MB)
            "SANDBOXD_MAX_RECEIVING_BYTES": str(1024 * MiB),
            "SANDBOXD_JOB_STORE": f"{self.dir}/jobs.sqlite3",
            "SANDBOXD_FILES_DIR": f"{self.dir}/files",
            "PYTHONPATH": f"{ROOT}:{os.environ.get('PYTHONPATH', '')}",
        }
        log = open(f"{self.dir}/log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log, env=env, cwd=ROOT)
        bl.wait_ready(self.url, self.proc, f"{self.dir}/log")

    def send(self, method: str, path: str, data: bytes) -> tuple[int, bytes]:
        req = urllib.request.Request(
            self.url + path, data=data, method=method, headers={"Content-Type": "application/msgpack"}
        )
        try:
            with urllib.request.urlopen(req, timeout=600) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def peak_rss(self) -> int:
        return bl.rss_bytes(self.proc.pid, "VmHWM")

    def stop(self) -> None:
        bl.stop_process(self.proc)


def tests_data(t: int, size: int) -> list[bytes]:
    each = size // t
    return [bytes([97 + i % 26]) * each for i in range(t)]


def run_mode(mode: str, n: int, inputs: list[bytes], workers: int) -> dict[str, Any]:
    d = Daemon(mode)
    try:
        sent = 0
        if mode == "hash":
            tests = []
            for data in inputs:
                sha = hashlib.sha256(data).hexdigest()
                st, raw = d.send("PUT", f"/v1/files/{sha}", data)
                assert st in (200, 201), raw
                sent += len(data)
                tests.append({"input_sha256": sha, "expected": str(len(data)).encode()})
        else:
            tests = [{"input": data, "expected": str(len(data)).encode()} for data in inputs]
        body = msgspec.msgpack.encode({"lang": "bash", "source": SOURCE, "tests": tests})
        del tests

        def one(_: int) -> str:
            st, raw = d.send("POST", "/v1/submissions", body)
            assert st == 200, raw[:300]
            return str(msgspec.msgpack.decode(raw)["verdict"])

        t0 = time.monotonic()
        with ThreadPoolExecutor(workers) as pool:
            verdicts = list(pool.map(one, range(n)))
        elapsed = time.monotonic() - t0
        sent += n * len(body)
        assert verdicts == ["AC"] * n, set(verdicts)
        return {"mode": mode, "bytes_sent": sent, "seconds": round(elapsed, 2), "peak_rss": d.peak_rss()}
    finally:
        d.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1000, help="submissions per mode")
    ap.add_argument("--tests", type=int, default=20)
    ap.add_argument("--size", type=int, default=100 * 1000 * 1000, help="bytes of all tests' inputs together")
    ap.add_argument("--workers", type=int, default=2, help="submissions in flight at once")
    ap.add_argument("--quick", action="store_true", help="n=2, 4 tests of 4 MB: a smoke test")
    ap.add_argument("--json", action="store_true")
    ns = ap.parse_args()
    if ns.quick:
        ns.n, ns.tests, ns.size = 2, 4, 4 * 1000 * 1000
    inputs = tests_data(ns.tests, ns.size)
    rows = [run_mode(m, ns.n, inputs, ns.workers) for m in ("hash", "inline")]
    if ns.json:
        print(json.dumps({"n": ns.n, "tests": ns.tests, "size": ns.size, "rows": rows}))
        return 0
    print(f"{ns.n} submissions x {ns.tests} tests, {ns.size / 1e6:.0f} MB of tests, {ns.workers} in flight")
    print(f"{'mode':8} {'sent MB':>10} {'seconds':>9} {'peak RSS MiB':>13}")
    for r in rows:
        print(f"{r['mode']:8} {r['bytes_sent'] / 1e6:10.1f} {r['seconds']:9.2f} {r['peak_rss'] / MiB:13.1f}")
    h, i = rows
    print(
        f"inline / hash: bytes {i['bytes_sent'] / h['bytes_sent']:.1f}x, time {i['seconds'] / h['seconds']:.2f}x, "
        f"peak RSS {i['peak_rss'] / h['peak_rss']:.2f}x"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
