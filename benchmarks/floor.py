"""The floor of sandboxd's process layout (issue 18): what a round trip costs
with sandboxd's hops and nothing of its work, next to sandboxd and bare.

sandboxd's round trip crosses four processes: the client, the daemon
(Python, uvloop), the box's agent (C) and the run.  This builds the same
chain with the least a Python daemon can do in it:

  floor    a client (asyncio streams, the wire's 4-byte length + msgpack
           frames) -> a uvloop server (a Protocol: frame, msgpack decode, an
           idle agent, two output pipes, sendmsg with three fds, the
           agent's reply, the pipes read, a msgpack reply) -> floor_agent.c
           (vfork + exec with those fds, poll on a signalfd, wait4, reply),
           one agent per pool slot.  No namespaces, cgroups, seccomp,
           rlimits, uid, reset, job record, key, tenant or admission.
  sandboxd the daemon of `tree` (its default pool, as ab_roundtrip.py) with
           its own AsyncClient: everything above plus isolation and the job
           machinery.
  bare     posix_spawn + waitpid of /bin/true from the benchmark process.

Each round measures all three one after another (round trips, then 8
clients for `--seconds`), and prints p50/p99 and ratios to bare of the same
run, and the server's CPU per run.  So "floor / bare" is what the layout
itself costs on this machine (the process hops, a minimal Python relay),
and "sandboxd / floor" what sandboxd's own work adds to it.

    PYTHONPATH=$PWD:$PWD/clients/python .venv/bin/python benchmarks/floor.py . [--rounds 3] [--n 2000] [--seconds 3]
"""

from __future__ import annotations

import argparse
import array
import asyncio
import collections
import os
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import msgspec

HERE = Path(__file__).resolve().parent
LEN = struct.Struct(">I")
REPLY = struct.Struct("=QQ")


# --- the floor server (a subprocess: `floor.py --serve SOCK POOL AGENT`) ---------


class _Agent:
    def __init__(self, binary: str, loop: asyncio.AbstractEventLoop) -> None:
        self.sock, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.proc = subprocess.Popen([binary, str(theirs.fileno())], pass_fds=(theirs.fileno(),))
        theirs.close()
        self.sock.setblocking(False)
        self.waiter: asyncio.Future[bytes] | None = None
        loop.add_reader(self.sock.fileno(), self._readable)

    def _readable(self) -> None:
        data = self.sock.recv(64)
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(data)


class _Server(asyncio.Protocol):
    def __init__(
        self, pool: collections.deque[_Agent], waiting: collections.deque[asyncio.Future[_Agent]], null_fd: int
    ) -> None:
        self.pool, self.waiting, self.null_fd = pool, waiting, null_fd
        self.buf = b""
        self.tasks: set[asyncio.Task[None]] = set()  # (the loop keeps only weak references)
        self.transport: asyncio.WriteTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # (uvloop's is no asyncio.Transport subclass)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while len(self.buf) >= 4:
            (n,) = LEN.unpack_from(self.buf)
            if len(self.buf) < 4 + n:
                return
            frame, self.buf = self.buf[4 : 4 + n], self.buf[4 + n :]
            task = asyncio.ensure_future(self._run(msgspec.msgpack.decode(frame)))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _run(self, msg: dict[str, object]) -> None:
        if self.pool:
            agent = self.pool.popleft()
        else:
            fut: asyncio.Future[_Agent] = asyncio.get_running_loop().create_future()
            self.waiting.append(fut)
            agent = await fut
        try:
            body = msg["body"]
            assert isinstance(body, dict)
            out_r, out_w = os.pipe2(os.O_CLOEXEC)
            err_r, err_w = os.pipe2(os.O_CLOEXEC)
            os.set_blocking(out_r, False)
            os.set_blocking(err_r, False)
            agent.waiter = asyncio.get_running_loop().create_future()
            fds = array.array("i", [self.null_fd, out_w, err_w])
            agent.sock.sendmsg([body["cmd"][0].encode()], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)])
            os.close(out_w)
            os.close(err_w)
            status, wall = REPLY.unpack(await agent.waiter)
            outs = []
            for fd in (out_r, err_r):
                chunks = []
                while True:
                    try:
                        b = os.read(fd, 1 << 16)
                    except BlockingIOError:  # (a writer alive: not with /bin/true)
                        break
                    if not b:
                        break
                    chunks.append(b)
                os.close(fd)
                outs.append(b"".join(chunks))
        finally:
            if self.waiting:
                self.waiting.popleft().set_result(agent)
            else:
                self.pool.append(agent)
        reply = {"id": msg["id"], "ok": True, "result": {"status": status, "wall_time": wall / 1e9, "stdout": outs[0]}}
        data = msgspec.msgpack.encode(reply)
        assert self.transport is not None
        self.transport.write(LEN.pack(len(data)) + data)


def serve(path: str, pool_size: int, binary: str) -> None:
    import uvloop

    null_fd = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)  # every run's stdin

    async def main() -> None:
        loop = asyncio.get_running_loop()
        pool = collections.deque(_Agent(binary, loop) for _ in range(pool_size))
        waiting: collections.deque[asyncio.Future[_Agent]] = collections.deque()
        server = await loop.create_unix_server(lambda: _Server(pool, waiting, null_fd), path)
        async with server:
            await server.serve_forever()

    uvloop.run(main())


# --- the benchmark ---------------------------------------------------------------


async def floor_trips(path: str, n: int) -> list[int]:
    reader, writer = await asyncio.open_unix_connection(path)
    out = []
    for i in range(n + 20):
        t = time.perf_counter_ns()
        data = msgspec.msgpack.encode({"id": i, "op": "run", "body": {"cmd": ["/bin/true"]}})
        writer.write(LEN.pack(len(data)) + data)
        (k,) = LEN.unpack(await reader.readexactly(4))
        reply = msgspec.msgpack.decode(await reader.readexactly(k))
        assert reply["ok"] and reply["result"]["status"] == 0, reply
        if i >= 20:
            out.append(time.perf_counter_ns() - t)
    writer.close()
    return out


async def floor_rate(path: str, clients: int, seconds: float) -> float:
    stop = time.monotonic() + seconds
    count = [0]

    async def one(c: int) -> None:
        reader, writer = await asyncio.open_unix_connection(path)
        i = 0
        while time.monotonic() < stop:
            data = msgspec.msgpack.encode({"id": i, "op": "run", "body": {"cmd": ["/bin/true"]}})
            writer.write(LEN.pack(len(data)) + data)
            (k,) = LEN.unpack(await reader.readexactly(4))
            await reader.readexactly(k)
            i += 1
        count[0] += i
        writer.close()

    t0 = time.monotonic()
    await asyncio.gather(*(one(c) for c in range(clients)))
    return count[0] / (time.monotonic() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("tree", type=Path, help="the sandboxd tree to measure beside the floor")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--n", type=int, default=2000, help="round trips per round and kind")
    ap.add_argument("--seconds", type=float, default=3.0, help="8-client throughput per round and kind")
    ap.add_argument("--pool", type=int, default=2 * (os.cpu_count() or 1), help="floor agents (sandboxd: its default)")
    a = ap.parse_args()

    import uvloop
    from ab_roundtrip import bare_rate, cpu, start
    from benchlib import summary_ms
    from daemon import bare_true, round_trip, throughput

    d = tempfile.mkdtemp(prefix="sandboxd-bench-floor-")
    binary = f"{d}/floor_agent"
    subprocess.run(["gcc", "-O2", "-o", binary, str(HERE / "floor_agent.c")], check=True)
    fsock = f"{d}/floor.sock"
    floor = subprocess.Popen([sys.executable, __file__, "--serve", fsock, str(a.pool), binary])
    for _ in range(200):
        if os.path.exists(fsock):
            break
        time.sleep(0.05)
    sbx, ssock, _ = start(a.tree.resolve(), "floor")
    lat: dict[str, list[int]] = {"bare": [], "floor": [], "sandboxd": []}
    rate: dict[str, list[float]] = {"bare": [], "floor": [], "sandboxd": []}
    per_run_cpu: dict[str, list[float]] = {"floor": [], "sandboxd": []}
    load0 = os.getloadavg()[0]
    try:
        for _ in range(a.rounds):
            lat["bare"] += bare_true(a.n)
            c0 = cpu(floor.pid)
            lat["floor"] += uvloop.run(floor_trips(fsock, a.n))
            per_run_cpu["floor"].append((cpu(floor.pid) - c0) / (a.n + 20) * 1e6)
            c0 = cpu(sbx.pid)
            lat["sandboxd"] += uvloop.run(round_trip(ssock, a.n))
            per_run_cpu["sandboxd"].append((cpu(sbx.pid) - c0) / (a.n + 20) * 1e6)
            rate["bare"].append(bare_rate(8, a.seconds))
            rate["floor"].append(uvloop.run(floor_rate(fsock, 8, a.seconds)))
            rate["sandboxd"].append(uvloop.run(throughput(ssock, 8, a.seconds))[0])
    finally:
        for p in (floor, sbx):
            p.terminate()
            p.wait(60)
    load1 = os.getloadavg()[0]
    print(f"load average {load0:.2f} -> {load1:.2f}; {a.rounds} rounds x {a.n} round trips, 8 clients x {a.seconds} s")
    print("\n| | p50 ms | p99 ms | p50 / bare | p99 / bare | server CPU per run µs | 8 clients runs/s | / bare |")
    print("|---|---|---|---|---|---|---|---|")
    base = summary_ms(lat["bare"])
    brate = statistics.median(rate["bare"])
    for k in ("bare", "floor", "sandboxd"):
        s = summary_ms(lat[k])
        c = f"{statistics.median(per_run_cpu[k]):.0f}" if k in per_run_cpu else "-"
        r = statistics.median(rate[k])
        print(
            f"| {k} | {s['p50']:.3f} | {s['p99']:.3f} | {s['p50'] / base['p50']:.2f}x | {s['p99'] / base['p99']:.2f}x"
            f" | {c} | {r:.0f} | {r / brate:.2f}x |"
        )
    f, s = summary_ms(lat["floor"]), summary_ms(lat["sandboxd"])
    more = (s["p50"] - f["p50"]) * 1e3
    print(f"\nsandboxd / floor: p50 {s['p50'] / f['p50']:.2f}x (+{more:.0f} µs), p99 {s['p99'] / f['p99']:.2f}x")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--serve":
        serve(sys.argv[2], int(sys.argv[3]), sys.argv[4])
    else:
        main()
