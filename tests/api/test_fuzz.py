"""Fuzz the wire parsers with hypothesis against a real daemon: no crash, no hang, no 5xx."""

from __future__ import annotations

import socket
import struct
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest
from daemon_util import Daemon
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from instances import inst


@pytest.fixture(scope="module")
def daemon() -> Iterator[Daemon]:
    d = Daemon(inst("-fuzz"), pool_size=2)
    yield d
    assert d.stop() == 0, d.output()


SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), database=None)

ints = st.integers(-(2**63), 2**63 - 1)  # what msgpack can carry
scalars = st.none() | st.booleans() | ints | st.floats() | st.text(max_size=20) | st.binary(max_size=20)
values = st.recursive(scalars, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=10), c, max_size=4))
ops = st.sampled_from(["run", "submit", "get", "wait", "cancel", "status", "languages", "ping", "nope", ""])
# Bodies close to valid ones reach deeper into validation than random maps do.
run_bodies = st.fixed_dictionaries(
    {"cmd": st.lists(st.text(max_size=8), max_size=3)},
    optional={
        "limits": st.dictionaries(st.sampled_from(["cpu_time", "memory", "procs", "output", "bogus"]), values),
        "files_in": st.lists(st.fixed_dictionaries({"path": st.text(max_size=12)}), max_size=2),
        "files_out": st.lists(st.text(max_size=12), max_size=2),
        "stdin": values,
    },
)
requests = st.fixed_dictionaries(
    {"id": st.integers(0, 2**31) | st.text(max_size=5), "op": ops},
    optional={"body": run_bodies | values, "wait": values, "progress": st.booleans()},
)


def _recv(s: socket.socket) -> Any:
    head = s.recv(4, socket.MSG_WAITALL)
    assert len(head) == 4, "the daemon closed the connection"
    (n,) = struct.unpack(">I", head)
    return msgspec.msgpack.decode(s.recv(n, socket.MSG_WAITALL))


def _send(s: socket.socket, payload: bytes) -> None:
    s.sendall(struct.pack(">I", len(payload)) + payload)


@SETTINGS
@given(frame=st.binary(max_size=200) | requests.map(msgspec.msgpack.encode))
def test_socket_frames(daemon: Daemon, frame: bytes) -> None:
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(20)
        s.connect(daemon.sock)
        _send(s, frame)
        _send(s, msgspec.msgpack.encode({"id": "probe", "op": "ping"}))
        # Whatever the first frame was, the probe gets its answer on the same connection.
        while True:
            msg = _recv(s)
            if "event" in msg:
                continue
            if msg.get("id") == "probe":
                assert msg["ok"] is True
                break
            if not msg.get("ok", True):
                assert msg["error"]["code"] != "internal", msg


@SETTINGS
@given(
    path=st.sampled_from(["/v1/runs", "/v1/submissions"]),
    ctype=st.sampled_from(["application/json", "application/msgpack", "text/plain"]),
    body=st.binary(max_size=200) | run_bodies.map(msgspec.msgpack.encode) | values.map(msgspec.json.encode),
)
def test_http_bodies(daemon: Daemon, path: str, ctype: str, body: bytes) -> None:
    req = urllib.request.Request(daemon.http + path, data=body, method="POST", headers={"Content-Type": ctype})
    try:
        with urllib.request.urlopen(req, timeout=20) as r:
            assert r.status in (200, 202)
    except urllib.error.HTTPError as e:
        assert 400 <= e.code < 500, e.read()[:300]


def test_daemon_still_serves_after_fuzzing(daemon: Daemon) -> None:
    with urllib.request.urlopen(daemon.http + "/readyz", timeout=10) as r:
        assert r.status == 200
    assert daemon.proc.poll() is None
