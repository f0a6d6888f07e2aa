"""A run's large stdin is neither copied by its decode nor by its spec's
encoding for the job store (issue 13: each was a 40 MiB copy with the GIL
held, 60-110 ms of the event loop).  Structural: the decoded stdin is a view
of the received body, the stored pieces hold that same object, and what the
store keeps reads back, after a daemon's SIGKILL and restart, as the stdin sent.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import mmap
import os
import signal
import tempfile
import time
import urllib.request
from pathlib import Path

import msgspec
import pytest
from daemon_util import Daemon
from instances import inst

from sandboxd.api.bodies import decode
from sandboxd.api.inbound import receive_buffer
from sandboxd.engine.budget import nbytes
from sandboxd.jobs.accept import encoded
from sandboxd.jobs.fingerprint import canonical, fingerprint
from sandboxd.jobs.specpieces import SPLIT_FROM
from sandboxd.jobs.store import JobStore, NewJob, Stored
from sandboxd.jobs.table import decode_spec, encode_spec
from sandboxd.schema import RunRequest

MiB = 1 << 20


def _received(body: bytes) -> mmap.mmap | bytearray:
    buf = receive_buffer(len(body))  # (as a transport receives it: sandboxd.api.inbound)
    buf[:] = body
    return buf


def _body(stdin: bytes, **more: object) -> bytes:
    return msgspec.msgpack.encode({"cmd": ["cat"], "stdin": stdin, "cwd": "/box", **more})


def test_a_msgpack_stdin_is_a_view_of_the_received_body() -> None:
    buf = _received(_body(os.urandom(3 * MiB)))
    req = decode(buf, RunRequest, "msgpack")
    assert isinstance(req.stdin, memoryview) and req.stdin.obj is buf  # (was: a bytes copy)
    # ...and the memory budget still counts it (a view is not an object of a few bytes).
    assert nbytes(req) >= 3 * MiB


@pytest.mark.parametrize("n", [0, 1, 255, 256, 65535, 65536, SPLIT_FROM - 1, SPLIT_FROM, SPLIT_FROM + 1, 5 * MiB])
@pytest.mark.parametrize("keyed", [False, True])
def test_the_stored_spec_is_the_same_bytes_without_a_copy_of_stdin(n: int, keyed: bool) -> None:
    req = decode(_received(_body(os.urandom(n), priority=2, env={"A": "b"})), RunRequest, "msgpack")
    enc = encoded("run", req, "http://cb.example/x", keyed)
    whole = canonical(req) if keyed else encode_spec(req)
    assert b"".join(enc.pieces) == whole and enc.size == len(whole)
    if keyed:
        assert enc.fingerprint == fingerprint("run", req, "http://cb.example/x")
    # A large stdin is one of the pieces, the decoded view itself (was: copied into one bytes).
    assert any(p is req.stdin for p in enc.pieces) == (n >= SPLIT_FROM)


def test_pieces_stored_read_back_as_the_request(tmp_path: Path) -> None:
    stdin = os.urandom(4 * MiB)
    req = decode(_received(_body(stdin)), RunRequest, "msgpack")
    enc = encoded("run", req, None, False)
    first, *more = enc.pieces

    async def scenario() -> list[Stored]:
        s = JobStore(tmp_path / "j.sqlite3", 600)
        fut: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        s.add(NewJob("j1", "run", bytes(first), time.time(), more=more), lambda ok, v: fut.set_result((ok, v)))
        assert await fut == (True, None)
        assert s.usage.open == enc.size  # (store_max_bytes counts every piece)
        await s.close()
        s2 = JobStore(tmp_path / "j.sqlite3", 600)
        try:
            return s2.recover(lambda _s: b"")[0]
        finally:
            await s2.close()

    (row,) = asyncio.run(scenario())
    assert row.spec is not None
    got = decode_spec("run", row.spec)[1]
    assert got.cmd == ["cat"] and bytes(got.stdin) == stdin


def test_a_large_stdin_job_accepted_survives_a_kill_9_whole() -> None:
    """Accepted over HTTP as msgpack, killed before it ran, run again by the next daemon with all its stdin."""
    tmp = Path(tempfile.mkdtemp(prefix="sandboxd-stdin-"))
    env = {"SANDBOXD_JOB_STORE": str(tmp / "jobs.sqlite3")}
    stdin = os.urandom(6 * MiB)
    body = msgspec.msgpack.encode({"cmd": ["sh", "-c", "sleep 3; sha256sum"], "stdin": stdin})
    d = Daemon(inst("-stdin"), pool_size=1, env=env)
    try:
        req = urllib.request.Request(
            d.http + "/v1/runs?wait=false", data=body, method="POST", headers={"Content-Type": "application/msgpack"}
        )
        with urllib.request.urlopen(req, timeout=60) as r:
            assert r.status == 202
            job = msgspec.msgpack.decode(r.read())["job"]
    finally:
        d.proc.send_signal(signal.SIGKILL)
        d.proc.wait()
        d.stop()
    d2 = Daemon(inst("-stdin"), pool_size=1, env=env)
    try:
        deadline = time.monotonic() + 120
        while True:
            with urllib.request.urlopen(d2.http + f"/v1/jobs/{job}?wait=20", timeout=60) as r:
                info = msgspec.json.decode(r.read())
            if info["state"] in ("done", "failed", "lost") or time.monotonic() > deadline:
                break
        assert info["state"] == "done", info
        out = base64.b64decode(info["result"]["stdout"]).decode()
        assert out.split()[0] == hashlib.sha256(stdin).hexdigest(), out
    finally:
        assert d2.stop() == 0, d2.output()
