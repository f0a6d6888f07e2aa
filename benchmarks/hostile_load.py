"""Hostile loads within every per-request limit (issue 13): the daemon's RSS and /healthz latency.

Starts its own `sandboxd serve` (instance "bench-hostile-<pid>", its own
socket and port), then applies one load after another:

  zip        a Judge0 additional_files zip whose central directory holds
             ~a million records (the EOCD count lies), as large as max_body allows
  files-out  one run asking for the same 16 MiB file 24 times, then for 24
             distinct 16 MiB files
  uploads    20 uploads declaring 50 MiB that stall 1 MiB short, plus 500
             connections that never send a byte
  stdin      24 queued runs with 40 MiB of stdin each
  results    150 Judge0 submissions whose results (2 MiB of stdout each) are kept
  zip+stdin  the zip and the stdin loads at once

Throughout, a process asks /healthz every ~20 ms on a fresh connection, asks
the same of a bare control server right after (what scheduling alone costs
on this machine), and reads the daemon's VmRSS from /proc.  Prints one row
per load: /healthz p50/p99/max, the control's p99/max, and failures, the daemon's RSS when the load starts, its peak
during the load (VmHWM, reset when the load starts) and its RSS after it,
and the load's **growth**: its peak minus the idle daemon's RSS (measured
once, before the first load).  The growth is what is compared with the
configured memory budget (GET /v1/status "memory_budget"): the idle daemon's
own RSS (interpreter, code, warm boxes' bookkeeping) is not job memory, but
whatever an earlier load left behind is counted against the next.
`--fresh` runs each load on a daemon of its own instead.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/hostile_load.py            # full (minutes)
    PYTHONPATH=$PWD .venv/bin/python benchmarks/hostile_load.py --quick    # smaller loads, ~30 s
    PYTHONPATH=$PWD .venv/bin/python benchmarks/hostile_load.py --budget 256  # against a 256 MiB memory_budget
    PYTHONPATH=$PWD .venv/bin/python benchmarks/hostile_load.py --budget 256 --fresh  # a daemon per load

HOSTILE_LOAD_LOG=FILE appends the daemon's log to FILE when it stops (with
SANDBOXD_LOG_STALL_MS=30: each long turn of its loop, with its stacks).

It uses no configuration key of its own, so the same script measures an
older checkout (PYTHONPATH=/path/to/it) for comparison.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import http.client
import json
import multiprocessing
import os
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import benchlib as bl
from benchlib import markdown_table, percentile

MiB = 1 << 20
# A bare asyncio server answering any request with 200: its latency, sampled
# beside the daemon's, is what this machine's scheduling alone costs.
CONTROL = """
import asyncio, sys
async def answer(r, w):
    try:
        while await r.readuntil(b"\\r\\n\\r\\n"):
            w.write(b"HTTP/1.1 200 OK\\r\\nContent-Length: 11\\r\\n\\r\\n{\\"ok\\":true}")
    except Exception:
        pass
    w.close()
async def main():
    s = await asyncio.start_server(answer, "127.0.0.1", 0)
    print(s.sockets[0].getsockname()[1], flush=True)
    await s.serve_forever()
asyncio.run(main())
"""


@dataclass
class Sizes:
    zip_bytes: int  # the zip before base64 (the body is 4/3 of it)
    out_file: int
    out_count: int
    uploads: int
    upload_declared: int
    half_open: int
    stdin_jobs: int
    stdin_bytes: int
    results: int
    result_bytes: int
    hold: float  # seconds each connection load is held


FULL = Sizes(45 * MiB, 16 * MiB, 24, 20, 50 * MiB, 500, 24, 40 * MiB, 150, 2 * MiB, 8.0)
QUICK = Sizes(6 * MiB, 4 * MiB, 6, 5, 8 * MiB, 50, 4, 4 * MiB, 10, 256 << 10, 2.0)


@dataclass
class Phase:
    name: str
    lat_ms: list[float] = field(default_factory=list)
    fails: int = 0
    rss: list[int] = field(default_factory=list)
    control_ms: list[float] = field(default_factory=list)
    start: int = 0  # VmRSS when the load starts
    hwm: int = 0  # VmHWM at its end, reset at its start: the load's peak
    end: int = 0  # VmRSS after it (what the next load starts from)
    idle: int = 0  # the idle daemon's VmRSS: growth is measured over it
    note: str = ""

    @property
    def growth(self) -> int:
        return max(self.hwm, max(self.rss, default=0)) - self.idle


class Daemon:
    def __init__(self, pool: int, budget: int = 0) -> None:
        self.dir = tempfile.mkdtemp(prefix="sandboxd-hostile-")
        self.port = bl.free_port()
        self.sock = f"{self.dir}/sandboxd.sock"
        cmd = [sys.executable, "-m", "sandboxd", "serve", "--config", "/dev/null"]
        cmd += ["--instance", f"bench-hostile-{os.getpid()}", "--socket", self.sock]
        cmd += ["--http", f"127.0.0.1:{self.port}", "--pool-size", str(pool)]
        # (Its own pid file: the default, run_dir's, is one per host, and benchmarks run side by side.)
        env = {**os.environ, "SANDBOXD_SELFTEST": "false", "SANDBOXD_PID_FILE": f"{self.dir}/sandboxd.pid"}
        env = bl.scratch_store(env, self.dir)
        if budget:  # (else the daemon's default, from the host's memory)
            env["SANDBOXD_MEMORY_BUDGET"] = str(budget)
        self.log = open(f"{self.dir}/log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env)
        bl.wait_ready(f"http://127.0.0.1:{self.port}", self.proc, f"{self.dir}/log", timeout=120)

    def conn(self, timeout: float = 120) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)

    def request(self, method: str, path: str, body: bytes | None = None, ctype: str = "application/json") -> Any:
        c = self.conn()
        try:
            c.request(method, path, body=body, headers={"Content-Type": ctype} if body is not None else {})
            r = c.getresponse()
            data = r.read()
            return r.status, data
        finally:
            c.close()

    def get(self, path: str) -> tuple[int, bytes]:
        c = self.conn(timeout=5)
        try:
            c.request("GET", path)
            r = c.getresponse()
            return r.status, r.read()
        finally:
            c.close()

    def proc_status(self) -> dict[str, int]:
        return {k: v * 1024 for k, v in bl.proc_status(self.proc.pid, "VmRSS", "VmHWM").items()}

    def reset_peak(self) -> None:
        """VmHWM back to VmRSS (proc(5) clear_refs "5"), so the next reading is this load's peak."""
        with open(f"/proc/{self.proc.pid}/clear_refs", "w") as f:
            f.write("5")

    def stop(self) -> None:
        bl.stop_process(self.proc)
        self.log.close()
        keep = os.environ.get("HOSTILE_LOAD_LOG")  # (e.g. with SANDBOXD_LOG_STALL_MS: what held the loop)
        if keep:
            with open(f"{self.dir}/log", "rb") as src, open(keep, "ab") as dst:
                dst.write(src.read())
        bl.drop_store(self.dir)


def sample(port: int, control: int, pid: int, stop: Any, out: Any) -> None:
    """In a process of its own (the load generator's GIL must not delay it):
    (time, /healthz ms or None for a failure, VmRSS, the control's ms) every ~20 ms."""
    samples: list[tuple[float, float | None, int, float | None]] = []
    while not stop.is_set():
        t = time.monotonic()
        ms = bl.healthz_ms(port)
        rss = 0
        with contextlib.suppress(OSError, KeyError, ValueError):
            rss = bl.rss_bytes(pid)
        samples.append((t, ms, rss, bl.healthz_ms(control)))
        time.sleep(max(0.0, 0.02 - (time.monotonic() - t)))
    out.send(samples)


def assign(phases: list[Phase], windows: list[tuple[float, float]], samples: list[Any]) -> None:
    for t, dt, rss, ctl in samples:
        for ph, (a, b) in zip(phases, windows, strict=True):
            if a <= t < b:
                if dt is None:
                    ph.fails += 1
                else:
                    ph.lat_ms.append(dt)
                if rss:
                    ph.rss.append(rss)
                if ctl is not None:
                    ph.control_ms.append(ctl)


# --- the loads ------------------------------------------------------------------


def million_record_zip(size: int) -> tuple[bytes, int]:
    """A central directory of ~size bytes of 56-byte records behind an EOCD that says 1000."""
    rec = struct.pack("<4s6H3I5H2I", b"PK\x01\x02", 20, 20, 0, 0, 0, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0, 0) + b"f" * 10
    n = size // len(rec)
    cd = rec * n
    eocd = struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, 1000, 1000, len(cd), 0, 0)
    return cd + eocd, n


def load_zip(d: Daemon, s: Sizes) -> str:
    data, n = million_record_zip(s.zip_bytes)
    body = json.dumps(
        {"source_code": "print(1)", "language_id": 71, "additional_files": base64.b64encode(data).decode()}
    ).encode()
    t = time.perf_counter()
    status, _reply = d.request("POST", "/judge0/submissions", body)
    return f"{n} records, {len(body) >> 20} MiB body: HTTP {status} in {time.perf_counter() - t:.2f} s"


def _run(d: Daemon, req: dict[str, Any]) -> tuple[int, Any]:
    status, reply = d.request("POST", "/v1/runs", json.dumps(req).encode())
    try:
        return status, json.loads(reply)
    except ValueError:
        return status, reply[:200]


def load_files_out(d: Daemon, s: Sizes) -> str:
    make = f"head -c {s.out_file} /dev/zero > f"
    limits = {"memory": 2 * s.out_file * s.out_count + 64 * MiB, "file_size": s.out_file, "cpu_time": 20}
    status, _ = _run(d, {"cmd": ["sh", "-c", make], "files_out": ["f"] * s.out_count, "limits": limits})
    notes = [f"same file x{s.out_count}: HTTP {status}"]
    make_all = f"for i in $(seq {s.out_count}); do head -c {s.out_file} /dev/zero > f$i; done"
    paths = [f"f{i}" for i in range(1, s.out_count + 1)]
    status, reply = _run(d, {"cmd": ["sh", "-c", make_all], "files_out": paths, "limits": limits})
    if isinstance(reply, dict):
        kept = sum(len(base64.b64decode(f["content"])) for f in reply.get("files", []) if f.get("content"))
        notes.append(f"{s.out_count} distinct: HTTP {status}, {kept >> 20} MiB returned")
    return "; ".join(notes)


def load_uploads(d: Daemon, s: Sizes) -> str:
    """Uploads that send all but the last MiB of what they declare, then stall."""
    conns: list[socket.socket] = []
    refused = 0
    head = b"POST /v1/runs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"

    def upload(c: socket.socket) -> None:
        nonlocal refused
        with contextlib.suppress(OSError):
            c.sendall(head % s.upload_declared)
            chunk = b" " * MiB
            for _ in range(s.upload_declared // MiB - 1):
                c.sendall(chunk)
        c.settimeout(0)  # (with a timeout, recv would poll for it whatever its flags)
        with contextlib.suppress(OSError):
            if c.recv(100).startswith((b"HTTP/1.1 503", b"HTTP/1.1 429")):  # (receiving bytes, memory budget)
                refused += 1

    try:
        for _ in range(s.uploads):
            conns.append(socket.create_connection(("127.0.0.1", d.port), timeout=30))
        threads = [threading.Thread(target=upload, args=(c,)) for c in conns]
        for t in threads:
            t.start()
        for _ in range(s.half_open):
            conns.append(socket.create_connection(("127.0.0.1", d.port), timeout=10))
        for t in threads:
            t.join()
        time.sleep(s.hold)
    finally:
        for c in conns:
            c.close()
    return (
        f"{s.uploads} x {s.upload_declared >> 20} MiB stalled 1 MiB short ({refused} refused at once)"
        f" + {s.half_open} half-open"
    )


def load_stdin(d: Daemon, s: Sizes) -> str:
    import msgspec  # (the daemon's dependency; present wherever it runs)

    statuses: list[int] = []

    def one() -> None:
        body = msgspec.msgpack.encode({"cmd": ["sh", "-c", "sleep 1; cat > /dev/null"], "stdin": b"x" * s.stdin_bytes})
        statuses.append(d.request("POST", "/v1/runs?wait=false", body, "application/msgpack")[0])

    threads = [threading.Thread(target=one) for _ in range(s.stdin_jobs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    time.sleep(s.hold)
    return f"{s.stdin_jobs} x {s.stdin_bytes >> 20} MiB: " + ", ".join(
        f"{st}x{statuses.count(st)}" for st in sorted(set(statuses))
    )


def load_results(d: Daemon, s: Sizes) -> str:
    src = f"import sys\nsys.stdout.write('x' * {s.result_bytes})\n"
    body = json.dumps({"source_code": src, "language_id": 71, "cpu_time_limit": 5}).encode()
    tokens, statuses = [], []
    for _ in range(s.results):
        st, reply = d.request("POST", "/judge0/submissions", body)
        statuses.append(st)
        if st == 201:
            tokens.append(json.loads(reply)["token"])
    deadline = time.monotonic() + 600
    for tok in tokens:
        while time.monotonic() < deadline:
            st, reply = d.request("GET", f"/judge0/submissions/{tok}?fields=status_id")
            if st == 200 and json.loads(reply)["status_id"] > 2:
                break
            time.sleep(0.2)
    return f"{len(tokens)}/{s.results} accepted, {s.result_bytes >> 10} KiB stdout each, kept"


def load_zip_stdin(d: Daemon, s: Sizes) -> str:
    """The two largest bodies' loads at once: the zip's and the stdin jobs'."""
    notes: dict[str, str] = {}

    def one(name: str, load: Callable[[Daemon, Sizes], str]) -> None:
        notes[name] = load(d, s)

    threads = [threading.Thread(target=one, args=x) for x in (("zip", load_zip), ("stdin", load_stdin))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return f"zip: {notes.get('zip')}; stdin: {notes.get('stdin')}"


LOADS: list[tuple[str, Callable[[Daemon, Sizes], str]]] = [
    ("zip", load_zip),
    ("files-out", load_files_out),
    ("uploads", load_uploads),
    ("stdin", load_stdin),
    ("results", load_results),
    ("zip+stdin", load_zip_stdin),
]


def run_loads(names: list[str], sizes: Sizes, budget_mib: int) -> tuple[list[Phase], int | None]:
    """The loads named, one after another on one daemon: an idle phase, then a Phase per load."""
    d = Daemon(pool=2, budget=budget_mib * MiB)
    ctl_proc = subprocess.Popen([sys.executable, "-c", CONTROL], stdout=subprocess.PIPE, text=True)
    assert ctl_proc.stdout is not None
    control = int(ctl_proc.stdout.readline())
    stop = multiprocessing.Event()
    recv, send = multiprocessing.Pipe(duplex=False)
    sampler = multiprocessing.Process(target=sample, args=(d.port, control, d.proc.pid, stop, send), daemon=True)
    phases: list[Phase] = []
    windows: list[tuple[float, float]] = []
    try:
        status = json.loads(d.request("GET", "/v1/status")[1])
        budget = (status.get("memory_budget") or {}).get("limit")
        sampler.start()
        t0 = time.monotonic()
        time.sleep(1.0)
        st = d.proc_status()
        idle = st["VmRSS"]
        phases.append(Phase("idle", start=idle, hwm=st["VmHWM"], end=idle, idle=idle))
        windows.append((t0, time.monotonic()))
        loads = dict(LOADS)
        for name in names:
            d.reset_peak()
            ph = Phase(name, start=d.proc_status()["VmRSS"], idle=idle)
            t0 = time.monotonic()
            ph.note = loads[name](d, sizes)
            time.sleep(0.5)
            st = d.proc_status()
            ph.hwm, ph.end = st["VmHWM"], st["VmRSS"]
            phases.append(ph)
            windows.append((t0, time.monotonic()))
            print(f"{name}: {ph.note}", file=sys.stderr)
        stop.set()
        assign(phases, windows, recv.recv())
        sampler.join()
    finally:
        stop.set()
        d.stop()
        ctl_proc.kill()
        ctl_proc.wait()
    return phases, budget


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small loads: a smoke test")
    ap.add_argument("--only", default="", help="comma-separated loads to run (default: all)")
    ap.add_argument("--budget", type=int, default=0, help="memory_budget in MiB (default: the daemon's own)")
    ap.add_argument("--fresh", action="store_true", help="each load on a daemon of its own")
    args = ap.parse_args()
    sizes = QUICK if args.quick else FULL
    wanted = {x for x in args.only.split(",") if x}
    names = [name for name, _ in LOADS if not wanted or name in wanted]
    phases: list[Phase] = []
    budget: int | None = None
    for group in [[n] for n in names] if args.fresh else [names]:
        got, budget = run_loads(group, sizes, args.budget)
        phases += got
    print(table(phases, budget))
    worst = max((max(p.lat_ms, default=0.0) for p in phases), default=0.0)
    ctl = max((max(p.control_ms, default=0.0) for p in phases), default=0.0)
    fails = sum(p.fails for p in phases)
    print(f"\n/healthz max {worst:.1f} ms over all loads (the control's: {ctl:.1f} ms); failures {fails}")
    if not budget:
        print("memory_budget: not reported by /v1/status (no budget configured in this daemon)")
        return
    loads = [p for p in phases if p.name != "idle"]
    over = [p.name for p in loads if p.growth > budget]
    worst_p = max(loads, key=lambda p: p.growth, default=None)
    if worst_p is not None:
        print(
            f"largest growth over the idle daemon: {worst_p.name} {worst_p.growth >> 20} MiB, "
            f"vs memory_budget {budget >> 20} MiB: " + (f"OVER in {', '.join(over)}" if over else "every load within")
        )


def table(phases: list[Phase], budget: int | None) -> str:
    rows = []
    for p in phases:
        xs, cs = sorted(p.lat_ms), sorted(p.control_ms)
        within = "" if not budget or p.name == "idle" else ("yes" if p.growth <= budget else "OVER")
        rows.append(
            [
                p.name,
                str(len(xs)),
                f"{percentile(xs, 50):.1f}",
                f"{percentile(xs, 99):.1f}",
                f"{xs[-1]:.1f}" if xs else "-",
                f"{percentile(cs, 99):.1f} / {cs[-1]:.1f}" if cs else "-",
                str(p.fails),
                f"{p.start >> 20}",
                f"{max(p.hwm, max(p.rss, default=0)) >> 20}",
                f"{p.end >> 20}",
                "-" if p.name == "idle" else f"{p.growth >> 20}",
                within,
                p.note,
            ]
        )
    head = ["load", "healthz n", "p50 ms", "p99 ms", "max ms", "control p99 / max", "fail"]
    head += ["RSS at start MiB", "peak MiB", "RSS after MiB", "growth MiB", "within budget", "what"]
    return markdown_table(head, rows)


if __name__ == "__main__":
    main()
