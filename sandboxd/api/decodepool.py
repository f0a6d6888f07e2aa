"""Decode worker processes for large JSON bodies (sandboxd.api.bodies).

msgspec holds the GIL while it parses, so a 60 MB JSON body (base64 inside)
parsed on a thread of the daemon still stops its event loop for 130-400 ms.
Parsed in a worker process (sandboxd.api.decodeworker) it costs the daemon
only the msgpack the worker hands back, whose decode is little more than a
copy of the bytes fields (tens of ms for 48 MiB, the GIL given back between
bodies).  The worker's pipes are driven from the offload threads
(sandboxd.api.inbound): os.write and readinto release the GIL, and a reply is
read straight into the buffer it is decoded from, so no further copy is made.

Bounded like the offload pool it runs on: a worker per offload thread (one
body each at a time), and the input bytes admitted at once by its ByteGate.
A worker's memory is its body, the decoded value and its msgpack (about
three times max_body at most).  `takes` is False until `start`, so code that
embeds the API without the daemon (tests) decodes on the threads as before.
A worker that dies is replaced; the body it was decoding gets
`queue_full` (429, retry), never a decode inside the daemon instead.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import queue
import subprocess
import sys
import threading
from typing import Any, TypeVar

import msgspec

from sandboxd.api.bodies import Body, decode
from sandboxd.api.decodeworker import HEAD, OK, READY, REPLY
from sandboxd.errors import error

log = logging.getLogger(__name__)
T = TypeVar("T")
IN_PROCESS_FROM = 1 << 20  # JSON bodies this large go to a worker: below, it parses in < 3 ms
PIPE_BYTES = 1 << 20  # the default fs.pipe-max-size
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
_RAISED: dict[str, type[Exception]] = {
    "DecodeError": msgspec.DecodeError,
    "ValidationError": msgspec.ValidationError,
    "RecursionError": RecursionError,
}


class WorkerDied(Exception):
    pass


class _Worker:
    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sandboxd.api.decodeworker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=None,  # (its tracebacks, if any, in the daemon's log)
            close_fds=True,
        )
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.w, self.r = self.proc.stdin.fileno(), self.proc.stdout.fileno()
        self.ready = False  # its READY (written once it runs as nobody) is read before the first body
        for fd in (self.w, self.r):  # (64 KiB pipes: a context switch per 64 KiB of a 60 MB body)
            with contextlib.suppress(OSError):
                fcntl.fcntl(fd, F_SETPIPE_SZ, PIPE_BYTES)

    def call(self, name: str, body: Body) -> tuple[int, bytearray]:
        """One body through the worker (blocking: an offload thread's)."""
        try:
            if not self.ready:
                if self._read(len(READY)) != READY:
                    raise WorkerDied("no READY")
                self.ready = True
            self._write(HEAD.pack(len(name), len(body)) + name.encode())
            self._write(body)
            status, n = REPLY.unpack(self._read(REPLY.size))
            return status, self._read(n)
        except OSError as e:
            raise WorkerDied(str(e)) from None

    def _write(self, data: Body) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self.w, view) :]

    def _read(self, n: int) -> bytearray:
        buf = bytearray(n)  # (zeroed pages, faulted in by the kernel as readinto fills them: no GIL held)
        view, got = memoryview(buf), 0
        while got < n:
            k = os.readv(self.r, [view[got:]])
            if not k:
                raise WorkerDied(f"exit status {self.proc.poll()}")
            got += k
        return buf

    def stop(self) -> None:
        for f in (self.proc.stdin, self.proc.stdout):
            if f is not None:
                f.close()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class DecodePool:
    def __init__(self) -> None:
        self._idle: queue.SimpleQueue[_Worker] = queue.SimpleQueue()
        self._all: list[_Worker] = []
        self._lock = threading.Lock()
        self.workers = 0
        self.in_process = 0  # bodies decoded by a worker
        self.replaced = 0  # workers that died and were replaced

    def start(self, workers: int) -> None:
        """`workers` processes (the offload threads: sandboxd.api.inbound.OFFLOAD_WORKERS)."""
        for _ in range(workers):
            w = _Worker()
            self._all.append(w)
            self._idle.put(w)
        self.workers = workers

    def stop(self) -> None:
        self.workers = 0
        for w in self._all:
            w.stop()
        self._all.clear()

    def takes(self, n: int) -> bool:
        return self.workers > 0 and n >= IN_PROCESS_FROM

    def _call(self, name: str, body: Body) -> tuple[int, bytearray]:
        w = self._idle.get()
        try:
            status, payload = w.call(name, body)
        except WorkerDied as e:
            w.stop()
            if not self.workers:  # stopping: its pipes were closed under it
                raise error("draining", "the daemon is shutting down; retry on another host", 1.0) from None
            log.error("decode worker %d died (%s): replaced", w.proc.pid, e)
            with self._lock:
                self._all.remove(w)
                w = _Worker()
                self._all.append(w)
                self.replaced += 1
            raise error("queue_full", "body: its decoder process died; retry", 1.0) from None
        finally:
            self._idle.put(w)
        self.in_process += 1
        return status, payload

    def typed(self, body: Body, typ: type[T], what: str = "body") -> T:
        """decode(body, typ, "json", what), parsed by a worker (blocking: call it on an offload thread)."""
        status, payload = self._call(f"{typ.__name__}:{what}", body)
        if status == OK:
            return decode(payload, typ, "msgpack", what)
        code, message = msgspec.msgpack.decode(payload)
        raise error(code, message)

    def untyped(self, body: Body) -> Any:
        """msgspec.json.decode(body), parsed by a worker; raises what it would."""
        return self._value(*self._call("", body))

    def untyped_from(self, held: list[Body]) -> Any:
        """untyped() of the one body in `held`, taken out of it: with no other
        reference to it left, the body is freed once the worker has read it,
        before the value is built from the worker's msgpack (so the daemon
        holds two of the three at a time, not all three: sandboxd.bodyhold)."""
        return self._value(*self._call("", held.pop()))

    @staticmethod
    def _value(status: int, payload: bytearray) -> Any:
        if status == OK:
            return msgspec.msgpack.decode(payload)
        name, message = msgspec.msgpack.decode(payload)
        raise _RAISED.get(name, msgspec.DecodeError)(message)

    def snapshot(self) -> dict[str, Any]:
        pids = [w.proc.pid for w in self._all]
        return {"workers": self.workers, "pids": pids, "in_process": self.in_process, "replaced": self.replaced}


DECODE = DecodePool()
