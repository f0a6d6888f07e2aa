"""The file store on a real daemon: uploads, refusals, runs and submissions by
hash, eviction under the byte bound with a pinned file kept, the socket op,
and compiled programs served from the store."""

from __future__ import annotations

import base64
import hashlib
import socket
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest
from daemon_util import Daemon, frame, recv_frame
from instances import inst
from sandboxd_client import Client, Submission
from sandboxd_client import TestCase as Case  # (not Test*: pytest would collect it)

MAX_BYTES = 1 << 20  # (the smallest files.max_bytes: three 400 KiB files do not fit)
MAX_FILE = 600 << 10


@pytest.fixture(scope="module")
def daemon() -> Iterator[Daemon]:
    env = {
        "SANDBOXD_FILES_DIR": tempfile.mkdtemp(prefix="sandboxd-files-"),  # (empty at each session's start)
        "SANDBOXD_FILES_MAX_BYTES": str(MAX_BYTES),
        "SANDBOXD_FILES_MAX_FILE": str(MAX_FILE),
    }
    d = Daemon(inst("-files"), env=env)
    yield d
    assert d.stop() == 0, d.output()


def http(d: Daemon, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes, dict[str, str]]:
    req = urllib.request.Request(d.http + path, data=body, method=method)
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, r.read(), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read(), dict(e.headers)


def put(d: Daemon, data: bytes) -> str:
    sha = hashlib.sha256(data).hexdigest()
    st, raw, _ = http(d, "PUT", f"/v1/files/{sha}", data)
    assert st in (200, 201), raw
    return sha


def post(d: Daemon, path: str, body: Any) -> tuple[int, Any]:
    st, raw, _ = http(d, "POST", path, msgspec.json.encode(body))
    return st, msgspec.json.decode(raw)


def test_upload_once_then_head_and_get(daemon: Daemon) -> None:
    data = b"problem tests\n" * 1000
    sha = hashlib.sha256(data).hexdigest()
    assert http(daemon, "HEAD", f"/v1/files/{sha}")[0] == 404
    st, raw, _ = http(daemon, "PUT", f"/v1/files/{sha}", data)
    assert st == 201 and msgspec.json.decode(raw) == {"sha256": sha, "size": len(data), "created": True}
    st, raw, _ = http(daemon, "PUT", f"/v1/files/{sha}", data)
    assert st == 200 and msgspec.json.decode(raw)["created"] is False  # idempotent
    st, _, headers = http(daemon, "HEAD", f"/v1/files/{sha}")
    assert st == 200 and headers["Content-Length"] == str(len(data))
    st, raw, _ = http(daemon, "GET", f"/v1/files/{sha}")
    assert st == 200 and raw == data


def test_hash_mismatch_oversize_and_bad_names_are_refused(daemon: Daemon) -> None:
    wrong = "0" * 64
    st, raw, _ = http(daemon, "PUT", f"/v1/files/{wrong}", b"not that")
    err = msgspec.json.decode(raw)["error"]
    assert st == 400 and wrong in err["message"] and hashlib.sha256(b"not that").hexdigest() in err["message"]
    big = b"x" * (MAX_FILE + 1)
    st, raw, _ = http(daemon, "PUT", f"/v1/files/{hashlib.sha256(big).hexdigest()}", big)
    assert st == 413 and "files.max_file" in msgspec.json.decode(raw)["error"]["message"]
    st, raw, _ = http(daemon, "PUT", "/v1/files/ABC", b"x")
    assert st == 400 and "sha256" in msgspec.json.decode(raw)["error"]["message"]
    assert http(daemon, "HEAD", f"/v1/files/{wrong}")[0] == 404


def test_unknown_hash_is_refused_naming_the_field(daemon: Daemon) -> None:
    unknown = "e" * 64
    st, body = post(daemon, "/v1/runs", {"cmd": ["cat"], "stdin_sha256": unknown})
    assert st == 400 and "stdin_sha256" in body["error"]["message"] and unknown in body["error"]["message"]
    known = put(daemon, b"1 2\n")
    sub = {"lang": "bash", "source": "", "tests": [{"input_sha256": known}, {"input_sha256": unknown}]}
    st, body = post(daemon, "/v1/submissions", sub)
    assert st == 400 and "tests[1].input_sha256" in body["error"]["message"] and unknown in body["error"]["message"]
    st, body = post(daemon, "/v1/runs", {"cmd": ["cat"], "stdin": "eA==", "stdin_sha256": known})
    assert st == 400 and "not both" in body["error"]["message"]


def test_a_run_and_a_submission_by_hash(daemon: Daemon) -> None:
    stdin, extra = put(daemon, b"from the store\n"), put(daemon, b"extra file\n")
    st, res = post(
        daemon,
        "/v1/runs",
        {
            "cmd": ["sh", "-c", "cat; cat x/y.txt"],
            "stdin_sha256": stdin,
            "files_in": [{"path": "x/y.txt", "sha256": extra}],
        },
    )
    assert st == 200 and res["status"] == "ok"
    assert base64.b64decode(res["stdout"]) == b"from the store\nextra file\n"
    src = put(daemon, b"read a b; echo $((a + b))\n")
    tests = [(b"1 2\n", b"3\n"), (b"20 22\n", b"42\n"), (b"2 2\n", b"5\n")]
    refs = [{"input_sha256": put(daemon, i), "expected_sha256": put(daemon, e)} for i, e in tests]
    st, res = post(daemon, "/v1/submissions", {"lang": "bash", "source_sha256": src, "tests": refs})
    assert st == 200 and [t["verdict"] for t in res["tests"]] == ["AC", "AC", "WA"]


def test_eviction_keeps_a_pinned_file(daemon: Daemon) -> None:
    a, b, c = (bytes([65 + i]) * (400 << 10) for i in range(3))
    ha = put(daemon, a)
    # A job naming `a` holds it while it runs (and would while it waited).
    st, job = post(daemon, "/v1/runs?wait=false", {"cmd": ["sh", "-c", "sleep 3; wc -c"], "stdin_sha256": ha})
    assert st == 202, job
    hb = put(daemon, b)
    time.sleep(0.05)
    hc = put(daemon, c)  # 1.2 MiB > files.max_bytes: the least recently used unpinned file goes
    assert http(daemon, "HEAD", f"/v1/files/{ha}")[0] == 200
    assert http(daemon, "HEAD", f"/v1/files/{hb}")[0] == 404
    assert http(daemon, "HEAD", f"/v1/files/{hc}")[0] == 200
    deadline = time.monotonic() + 60
    while True:
        st, raw, _ = http(daemon, "GET", f"/v1/jobs/{job['job']}")
        info = msgspec.json.decode(raw)
        if info["state"] == "done" or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert info["state"] == "done" and base64.b64decode(info["result"]["stdout"]).strip() == str(len(a)).encode(), info


def test_the_socket_files_op(daemon: Daemon) -> None:
    data = b"over the socket"
    sha = hashlib.sha256(data).hexdigest()
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(daemon.sock)
        s.sendall(frame({"id": 1, "op": "files", "body": {"action": "head", "sha256": sha}}))
        assert recv_frame(s)["error"]["code"] == "not_found"
        s.sendall(frame({"id": 2, "op": "files", "body": {"action": "put", "sha256": "1" * 64, "content": data}}))
        assert recv_frame(s)["error"]["code"] == "bad_request"
        s.sendall(frame({"id": 3, "op": "files", "body": {"action": "put", "sha256": sha, "content": data}}))
        assert recv_frame(s)["result"] == {"sha256": sha, "size": len(data), "created": True}
        s.sendall(frame({"id": 4, "op": "files", "body": {"action": "get", "sha256": sha}}))
        assert recv_frame(s)["result"]["content"] == data
    assert http(daemon, "GET", f"/v1/files/{sha}")[1] == data


def _compiles(d: Daemon) -> dict[str, float]:
    raw = http(d, "GET", "/metrics")[1].decode()
    return {
        line.split('"')[1]: float(line.split()[-1])
        for line in raw.splitlines()
        if line.startswith("sandboxd_compiles{")
    }


def test_a_compiled_program_is_kept_in_the_store(daemon: Daemon) -> None:
    src = b'#include <stdio.h>\nint main(void) { puts("kept"); return 0; }\n'
    sub = {"lang": "c", "source": base64.b64encode(src).decode(), "tests": [{"input": ""}]}
    before = _compiles(daemon)
    st, res = post(daemon, "/v1/submissions", sub)
    assert st == 200 and res["verdict"] == "AC", res
    st, res = post(daemon, "/v1/submissions", sub)
    assert st == 200 and res["verdict"] == "AC"
    after = _compiles(daemon)
    assert after["compiled"] - before.get("compiled", 0) == 1 and after["hit"] - before.get("hit", 0) == 1
    status = http(daemon, "GET", "/metrics")[1].decode()
    assert "sandboxd_file_store_bytes" in status


@pytest.mark.parametrize("transport", ["unix", "http"])
def test_the_python_client_uploads_and_names_by_hash(daemon: Daemon, transport: str) -> None:
    address = f"unix://{daemon.sock}" if transport == "unix" else daemon.http
    with Client(address) as c:
        data = f"5 {transport}\n".encode()
        assert not c.has_file(hashlib.sha256(data).hexdigest())
        sha = c.upload(data)
        assert c.upload(data) == sha and c.has_file(sha) and c.download(sha) == data
        res = c.submit(Submission(lang="bash", source=b"read a b; echo $a\n", tests=[Case(input_sha256=sha)]))
        assert res.verdict == "AC" and res.tests[0].stdout == b"5\n"


def _gauge(d: Daemon, name: str) -> float:
    raw = http(d, "GET", "/metrics")[1].decode()
    return sum(float(line.split()[-1]) for line in raw.splitlines() if line.startswith(name))


def test_hashed_bytes_are_not_request_bytes(daemon: Daemon) -> None:
    """A queued job naming 500 KiB by hash holds a few hundred bytes of the memory
    budget and the job store, not 500 KiB (inline, it holds them all)."""
    sha = put(daemon, b"z" * (500 << 10))
    held = []
    for body in ({"stdin_sha256": sha}, {"stdin": base64.b64encode(b"z" * (500 << 10)).decode()}):
        st, job = post(daemon, "/v1/runs?wait=false", {"cmd": ["sh", "-c", "sleep 2; wc -c"], **body})
        assert st == 202, job
        held.append(
            (
                _gauge(daemon, 'sandboxd_memory_budget_bytes{holder="requests"}'),
                _gauge(daemon, 'sandboxd_job_store_bytes{holder="unfinished"}'),
            )
        )
        while msgspec.json.decode(http(daemon, "GET", f"/v1/jobs/{job['job']}")[1])["state"] != "done":
            time.sleep(0.2)
    (budget_hash, store_hash), (budget_inline, store_inline) = held
    assert budget_hash < 64 << 10 and store_hash < 64 << 10, held
    assert budget_inline > 500 << 10 and store_inline > 500 << 10, held  # (the gauges do see request bytes)
