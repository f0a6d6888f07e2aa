"""/healthz while clients post maximum-size bodies (issue 13): p50/p99/max, loaded vs idle, in one run.

Starts its own `sandboxd serve` (hostile_load.Daemon: its own instance, socket
and port), then for each phase runs CLIENTS client threads that each post
bodies as large as `max_body` allows, one after another, for --seconds:

  json-http        POST /v1/runs, JSON, stdin in base64 (the body is ~max_body)
  msgpack-http     POST /v1/runs, msgpack, stdin as bin
  msgpack-socket   run frames on the Unix socket, stdin as bin
  judge0-json      POST /judge0/submissions?wait=false, JSON, stdin in base64

A sampler process (not the load's: its GIL must not delay it) asks /healthz
every ~20 ms on a fresh connection, and right after it a control server (a
bare asyncio HTTP responder in a process of its own): on a shared, busy
machine the control's latency is what scheduling alone costs, so the
daemon's own stalls are the difference (both columns are printed).  Each run is `true` (stdin is not read):
the load is the daemon's, not the boxes'.  The daemon's decode-pool counters
(GET /v1/status "decode") are printed after each phase when it reports them.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/big_bodies.py               # 4 clients, 20 s a phase
    PYTHONPATH=$PWD .venv/bin/python benchmarks/big_bodies.py --quick       # 2 clients, 8 MiB, 5 s
    PYTHONPATH=$PWD .venv/bin/python benchmarks/big_bodies.py --floor       # the same load on bare aiohttp

--refused sends bodies that are decoded and refused (no run, no job store);
--size sets the body size (e.g. 8388608 to see what a smaller max_body buys).

No configuration key of its own: the same script measures an older checkout.
"""

from __future__ import annotations

import argparse
import base64
import json
import multiprocessing
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import msgspec
from benchlib import free_port, healthz_ms, markdown_table, percentile
from hostile_load import CONTROL, Daemon, Phase

MiB = 1 << 20
MAX_BODY = 64 * MiB  # the daemon's default max_body


FLOOR = """
import sys, uvloop
from aiohttp import web
async def health(r):
    return web.json_response({"ok": True})
async def post(r):
    await r.read()
    return web.json_response({"error": "read and dropped"}, status=400)
app = web.Application(client_max_size=int(sys.argv[2]))
app.router.add_get("/healthz", health)
app.router.add_post("/v1/runs", post)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), loop=uvloop.new_event_loop(), print=None)
"""


class Floor(Daemon):
    """--floor: a bare aiohttp app that only reads each body (no sandboxd code):
    what receiving bodies this large costs an event loop by itself."""

    def __init__(self, max_body: int) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen([sys.executable, "-c", FLOOR, str(self.port), str(max_body)])
        while True:
            try:
                if self.get("/healthz")[0] == 200:
                    break
            except OSError:
                time.sleep(0.1)

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


def sample(port: int, control: int, stop: Any, out: Any) -> None:
    """(time, daemon /healthz ms or None for a failure, control ms) every ~20 ms."""
    samples: list[tuple[float, float | None, float | None]] = []
    while not stop.is_set():
        t = time.monotonic()
        samples.append((t, healthz_ms(port), healthz_ms(control)))
        time.sleep(max(0.0, 0.02 - (time.monotonic() - t)))
    out.send(samples)


def assign(phases: list[Phase], ctl: dict[str, list[float]], windows: list[tuple[float, float]], got: Any) -> None:
    for t, dt, c in got:
        for ph, (a, b) in zip(phases, windows, strict=True):
            if a <= t < b:
                if dt is None:
                    ph.fails += 1
                else:
                    ph.lat_ms.append(dt)
                if c is not None:
                    ctl[ph.name].append(c)


def stdin_for(body_max: int, fmt: str) -> bytes:
    """The largest stdin whose request body stays under body_max (a little headroom for the rest)."""
    room = body_max - 4096
    return b"x" * (room * 3 // 4 if fmt == "json" else room)


CMD = ["true"]


def poster(d: Daemon, phase: str, size: int) -> Callable[[], int]:
    """One client's request: returns the HTTP status (socket: 200 ok / 0 error)."""
    if phase == "json-http":
        body = json.dumps({"cmd": CMD, "stdin": base64.b64encode(stdin_for(size, "json")).decode()}).encode()
        return lambda: d.request("POST", "/v1/runs", body)[0]
    if phase == "msgpack-http":
        body = msgspec.msgpack.encode({"cmd": CMD, "stdin": stdin_for(size, "msgpack")})
        return lambda: d.request("POST", "/v1/runs", body, "application/msgpack")[0]
    if phase == "judge0-json":
        src = base64.b64encode(b"print(1)\n").decode()
        stdin = base64.b64encode(stdin_for(size, "json")[: size * 3 // 4 - 8192]).decode()
        body = json.dumps({"source_code": src, "language_id": 71, "stdin": stdin}).encode()
        return lambda: d.request("POST", "/judge0/submissions?base64_encoded=true&wait=false", body)[0]
    frame = msgspec.msgpack.encode(
        {
            "id": 1,
            "op": "run",
            "body": msgspec.Raw(msgspec.msgpack.encode({"cmd": CMD, "stdin": stdin_for(size, "msgpack")})),
        }
    )
    framed = struct.pack(">I", len(frame)) + frame

    def over_socket() -> int:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(120)
            s.connect(d.sock)
            s.sendall(framed)
            (n,) = struct.unpack(">I", _exactly(s, 4))
            return 200 if msgspec.msgpack.decode(_exactly(s, n)).get("ok") else 0

    return over_socket


def _exactly(s: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("closed")
        buf += chunk
    return bytes(buf)


def load(post: Callable[[], int], clients: int, seconds: float) -> dict[int, int]:
    statuses: dict[int, int] = {}
    lock = threading.Lock()
    end = time.monotonic() + seconds

    def client() -> None:
        while time.monotonic() < end:
            try:
                st = post()
            except OSError:
                st = -1
            with lock:
                statuses[st] = statuses.get(st, 0) + 1

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return statuses


def decode_counters(d: Daemon) -> Any:
    try:
        return json.loads(d.request("GET", "/v1/status")[1]).get("decode")
    except (OSError, ValueError):
        return None


PHASES = ["json-http", "msgpack-http", "msgpack-socket", "judge0-json"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="2 clients, 8 MiB bodies, 5 s a phase")
    ap.add_argument("--clients", type=int, default=0)
    ap.add_argument("--seconds", type=float, default=0)
    ap.add_argument("--size", type=int, default=0, help="body bytes (default: max_body, 64 MiB)")
    ap.add_argument("--only", default="", help="comma-separated phases (default: all)")
    ap.add_argument("--refused", action="store_true", help="bodies refused once decoded (cmd []): no run, no store")
    ap.add_argument("--floor", action="store_true", help="a bare aiohttp app that only reads the bodies, no daemon")
    args = ap.parse_args()
    if args.refused:
        CMD.clear()
    clients = args.clients or (2 if args.quick else 4)
    seconds = args.seconds or (5.0 if args.quick else 20.0)
    size = args.size or (8 * MiB if args.quick else MAX_BODY)
    wanted = [p for p in PHASES if not args.only or p in args.only.split(",")]
    if args.floor:
        wanted = [p for p in wanted if p.endswith("-http")]
    d = Floor(size + MiB) if args.floor else Daemon(pool=2)
    ctl_proc = subprocess.Popen([sys.executable, "-c", CONTROL], stdout=subprocess.PIPE, text=True)
    assert ctl_proc.stdout is not None
    control = int(ctl_proc.stdout.readline())
    stop = multiprocessing.Event()
    recv, send = multiprocessing.Pipe(duplex=False)
    sampler = multiprocessing.Process(target=sample, args=(d.port, control, stop, send), daemon=True)
    phases: list[Phase] = []
    ctl: dict[str, list[float]] = {}
    windows: list[tuple[float, float]] = []
    try:
        sampler.start()
        time.sleep(0.5)
        for name in ["idle", *wanted]:
            ph = Phase(name)
            ctl[name] = []
            t0 = time.monotonic()
            if name == "idle":
                time.sleep(seconds)
                ph.note = "no load"
            else:
                st = load(poster(d, name, size), clients, seconds)
                counters = decode_counters(d)
                ph.note = f"{clients} x {size >> 20} MiB: " + ", ".join(f"{k}x{v}" for k, v in sorted(st.items()))
                if counters is not None:
                    ph.note += f"; decode {counters}"
            windows.append((t0, time.monotonic()))
            ph.hwm = d.proc_status()["VmHWM"]
            phases.append(ph)
            print(f"{name}: {ph.note}", file=sys.stderr)
            time.sleep(1.0)  # the last requests' replies, outside any window
        stop.set()
        assign(phases, ctl, windows, recv.recv())
        sampler.join()
    finally:
        stop.set()
        d.stop()
        ctl_proc.kill()
        ctl_proc.wait()
    rows = []
    for p in phases:
        xs = sorted(p.lat_ms)
        cs = sorted(ctl[p.name])
        lat = [f"{percentile(xs, 50):.1f}", f"{percentile(xs, 99):.1f}", f"{xs[-1]:.1f}" if xs else "-"]
        lat += [f"{percentile(cs, 50):.1f}", f"{percentile(cs, 99):.1f}"]
        rows.append([p.name, str(len(xs)), *lat, str(p.fails), str(p.hwm >> 20), p.note])
    head = ["phase", "healthz n", "p50 ms", "p99 ms", "max ms", "control p50", "control p99", "fail", "VmHWM MiB"]
    head.append("load")
    print(markdown_table(head, rows))
    worst = max((percentile(sorted(p.lat_ms), 99) for p in phases if p.name != "idle"), default=0.0)
    print(f"\n/healthz p99 under load (worst phase): {worst:.1f} ms ({'within' if worst <= 100 else 'OVER'} 100 ms)")


if __name__ == "__main__":
    main()
