"""Live sessions (docs/sessions.md): open -> first output byte, and one line's echo round trip.

Starts its own `sandboxd serve` (instance "bench-session", HTTP on a free
loopback port), compiles the C program once (the compile cache is warm for
every measured session), then measures:

  open -> first byte   WebSocket connect + start + box + exec + the program's
                       first write, as a web IDE's terminal sees it
  echo round trip      one line to stdin and back from stdout, in an open session

Baselines in the same run: the same C program compiled here and started with
posix_spawn over plain pipes (spawn -> first byte; one line's round trip),
and a one-shot POST /v1/runs of /bin/true over HTTP (a request's cost).

    .venv/bin/python benchmarks/session.py [--sessions 50] [--lines 500] [--quick] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import uvloop
from benchlib import free_port, machine, machine_line, markdown_table, summary_ms

ECHO_C = r"""#include <stdio.h>
int main(void) {
    char line[4096];
    setvbuf(stdout, NULL, _IONBF, 0);
    fputs("ready\n", stdout);
    while (fgets(line, sizeof line, stdin)) fputs(line, stdout);
    return 0;
}
"""


def start_daemon(pool: int) -> tuple[subprocess.Popen[bytes], str, str]:
    d = tempfile.mkdtemp(prefix="sandboxd-bench-session-")
    port = free_port()
    cmd = [sys.executable, "-m", "sandboxd", "serve", "--config", "/dev/null", "--instance", "bench-session"]
    cmd += ["--socket", f"{d}/sandboxd.sock", "--http", f"127.0.0.1:{port}", "--pool-size", str(pool)]
    cmd += ["--pid-file", f"{d}/sandboxd.pid", "--log-format", "json"]
    env = {**os.environ, "SANDBOXD_SELFTEST": "false", "SANDBOXD_JOB_STORE": f"{d}/jobs.sqlite3"}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(f"{d}/log", "wb"), env=env)  # noqa: SIM115
    return proc, f"http://127.0.0.1:{port}", d


async def wait_ready(http: aiohttp.ClientSession, base: str, log: str) -> None:
    for _ in range(600):
        try:
            async with http.get(base + "/readyz") as r:
                if r.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.1)
    raise SystemExit(f"daemon did not start; see {log}/log")


async def first_byte(http: aiohttp.ClientSession, url: str) -> int:
    """ns from connect to the first stdout byte; the session is then killed."""
    t0 = time.perf_counter_ns()
    async with http.ws_connect(url) as ws:
        await ws.send_str(json.dumps({"type": "start", "language": "c", "source": ECHO_C}))
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.BINARY and msg.data[0] == 1:
                dt = time.perf_counter_ns() - t0
                await ws.send_str('{"type":"kill"}')
                async for _ in ws:
                    pass
                return dt
    raise RuntimeError("the session ended without output")


async def round_trips(http: aiohttp.ClientSession, url: str, lines: int) -> list[int]:
    out: list[int] = []
    async with http.ws_connect(url) as ws:
        await ws.send_str(json.dumps({"type": "start", "language": "c", "source": ECHO_C, "idle_timeout": 30}))
        buf = b""
        while b"ready\n" not in buf:
            msg = await ws.receive()
            if msg.type == aiohttp.WSMsgType.BINARY:
                buf += msg.data[1:]
        for i in range(lines):
            line = f"line {i}\n".encode()
            t0 = time.perf_counter_ns()
            await ws.send_bytes(line)
            got = b""
            while not got.endswith(b"\n"):
                msg = await ws.receive()
                if msg.type == aiohttp.WSMsgType.BINARY:
                    got += msg.data[1:]
            out.append(time.perf_counter_ns() - t0)
            assert got == line, (got, line)
        await ws.send_str('{"type":"eof"}')
        async for _ in ws:
            pass
    return out


async def one_shot_runs(http: aiohttp.ClientSession, base: str, n: int) -> list[int]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter_ns()
        async with http.post(base + "/v1/runs", json={"cmd": ["/bin/true"]}) as r:
            assert r.status == 200, await r.text()
            await r.read()
        out.append(time.perf_counter_ns() - t0)
    return out


def bare_binary() -> str:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise SystemExit("needs a C compiler for the baseline")
    d = Path(tempfile.mkdtemp(prefix="sandboxd-bench-bare-"))
    (d / "echo.c").write_text(ECHO_C)
    subprocess.run([cc, "-O2", "-o", str(d / "echo"), str(d / "echo.c")], check=True)
    return str(d / "echo")


def _spawn(binary: str) -> tuple[int, int, int]:
    r_in, w_in = os.pipe()
    r_out, w_out = os.pipe()
    fa = [(os.POSIX_SPAWN_DUP2, r_in, 0), (os.POSIX_SPAWN_DUP2, w_out, 1)]
    pid = os.posix_spawn(binary, [binary], {}, file_actions=fa)
    os.close(r_in)
    os.close(w_out)
    return pid, w_in, r_out


def _read_line(fd: int) -> bytes:
    got = b""
    while not got.endswith(b"\n"):
        select.select([fd], [], [])
        got += os.read(fd, 4096)
    return got


def bare(binary: str, sessions: int, lines: int) -> tuple[list[int], list[int]]:
    firsts, rtts = [], []
    for _ in range(sessions):
        t0 = time.perf_counter_ns()
        pid, w, r = _spawn(binary)
        os.read(r, 1)
        firsts.append(time.perf_counter_ns() - t0)
        os.close(w)
        os.close(r)
        os.waitpid(pid, 0)
    pid, w, r = _spawn(binary)
    _read_line(r)
    for i in range(lines):
        line = f"line {i}\n".encode()
        t0 = time.perf_counter_ns()
        os.write(w, line)
        _read_line(r)
        rtts.append(time.perf_counter_ns() - t0)
    os.close(w)
    os.close(r)
    os.waitpid(pid, 0)
    return firsts, rtts


async def measure(a: argparse.Namespace) -> dict[str, Any]:
    proc, base, log = start_daemon(a.pool)
    url = base.replace("http://", "ws://") + "/v1/sessions"
    try:
        async with aiohttp.ClientSession() as http:
            await wait_ready(http, base, log)
            await first_byte(http, url)  # compiles once: every measured session hits the cache
            await one_shot_runs(http, base, 5)
            firsts = [await first_byte(http, url) for _ in range(a.sessions)]
            rtts = await round_trips(http, url, a.lines)
            runs = await one_shot_runs(http, base, a.sessions)
    finally:
        proc.terminate()
        proc.wait(60)
    bare_first, bare_rtt = bare(bare_binary(), a.sessions, a.lines)
    return {
        "session_first_byte": summary_ms(firsts),
        "bare_first_byte": summary_ms(bare_first),
        "session_echo_rtt": summary_ms(rtts),
        "bare_echo_rtt": summary_ms(bare_rtt),
        "http_run_true": summary_ms(runs),
    }


def report(res: dict[str, Any], a: argparse.Namespace) -> str:
    def row(name: str, key: str, base: str | None) -> list[str]:
        s = res[key]
        ratio = f"{s['p50'] / res[base]['p50']:.1f}x" if base else ""
        return [name, f"{s['p50']:.3f}", f"{s['p99']:.3f}", ratio]

    rows = [
        row(f"session: open -> first byte ({a.sessions} sessions)", "session_first_byte", "bare_first_byte"),
        row("bare posix_spawn + pipes: spawn -> first byte", "bare_first_byte", None),
        row("one-shot POST /v1/runs of /bin/true (HTTP)", "http_run_true", "bare_first_byte"),
        row(f"session: echo round trip of one line ({a.lines} lines)", "session_echo_rtt", "bare_echo_rtt"),
        row("bare pipes: echo round trip of one line", "bare_echo_rtt", None),
    ]
    return markdown_table(["measure", "p50 ms", "p99 ms", "x bare"], rows)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sessions", type=int, default=50)
    p.add_argument("--lines", type=int, default=500)
    p.add_argument("--pool", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="few samples (a smoke test: numbers meaningless)")
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    if a.quick:
        a.sessions, a.lines = 5, 20
    res = uvloop.run(measure(a))
    m = machine()
    if a.json:
        print(json.dumps({"bench": "session", "machine": m, "quick": a.quick, **res}))
    else:
        print(machine_line(m))
        print(report(res, a))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
