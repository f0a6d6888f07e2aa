"""Text mode for JSON results (`?text=1`): real runs on a real daemon, output that
is UTF-8, output that is not, and files of both kinds in one result."""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from compat.util import FleetStack
from daemon_util import Daemon
from instances import inst


@pytest.fixture(scope="module")
def daemon() -> Iterator[Daemon]:
    d = Daemon(inst("-text"), pool_size=1)
    yield d
    assert d.stop() == 0, d.output()


def call(d: Daemon, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(d.http + path, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


SCRIPT = r"""printf 'h\303\251llo\n'; printf '\377\376bad' >&2
printf 'ok \342\234\223' > text.txt; printf '\000\001\377' > bin.dat
head -c 3000000 /dev/zero | tr '\0' 'x' > big.txt"""


def b64(s: str) -> str:
    return base64.b64encode(s.encode()).decode()


def run(d: Daemon, query: str) -> tuple[int, Any]:
    req = {"cmd": ["sh", "-c", SCRIPT], "files_out": ["text.txt", "bin.dat", "big.txt", "missing.txt"]}
    return call(d, "POST", "/v1/runs" + query, req)


def test_text_mode_utf8_invalid_and_mixed_files(daemon: Daemon) -> None:
    st, r = run(daemon, "?text=1")
    assert st == 200 and r["status"] == "ok", r
    assert (r["stdout"], r["stdout_encoding"]) == ("héllo\n", "utf-8")
    assert r["stderr_encoding"] == "base64" and base64.b64decode(r["stderr"]) == b"\xff\xfebad"
    files = {f["path"]: f for f in r["files"]}
    assert (files["text.txt"]["content"], files["text.txt"]["content_encoding"]) == ("ok ✓", "utf-8")
    assert files["bin.dat"]["content_encoding"] == "base64"
    assert base64.b64decode(files["bin.dat"]["content"]) == b"\x00\x01\xff"
    assert files["big.txt"]["content"] == "x" * 3_000_000 and files["big.txt"]["content_encoding"] == "utf-8"
    assert "content" not in files["missing.txt"] and "content_encoding" not in files["missing.txt"]
    assert files["missing.txt"]["error"]


def test_default_stays_base64_without_markers(daemon: Daemon) -> None:
    st, r = run(daemon, "")
    assert st == 200 and base64.b64decode(r["stdout"]) == "héllo\n".encode()
    assert not any(k.endswith("_encoding") for k in r)
    st, r0 = run(daemon, "?text=0")
    assert st == 200 and r0["stdout"] == r["stdout"]


def test_text_mode_on_jobs_and_submissions(daemon: Daemon) -> None:
    st, queued = call(daemon, "POST", "/v1/runs?wait=false", {"cmd": ["printf", "\\303\\251"]})
    assert st == 202
    st, info = call(daemon, "GET", f"/v1/jobs/{queued['job']}?wait=30&text=1")
    assert st == 200 and info["result"]["stdout"] == "é" and info["result"]["stdout_encoding"] == "utf-8"
    # (requests stay base64: text mode is for results)
    zoe = b64("zoë\n")
    sub = {"lang": "python3", "source": b64("print(input())"), "tests": [{"input": zoe, "expected": zoe}]}
    st, res = call(daemon, "POST", "/v1/submissions?text=true", sub)
    assert st == 200 and res["verdict"] == "AC", res
    assert (res["tests"][0]["stdout"], res["tests"][0]["stdout_encoding"]) == ("zoë\n", "utf-8")


def test_a_bad_text_value_is_refused_before_running(daemon: Daemon) -> None:
    st, body = call(daemon, "POST", "/v1/runs?text=yes", {"cmd": ["true"]})
    assert st == 400 and body["error"]["message"].startswith("text:")


def test_text_mode_through_a_coordinator() -> None:
    stack = FleetStack(inst("-text-fleet"), pool_size=1)
    try:
        data = json.dumps({"cmd": ["printf", "\\303\\251\\377"]}).encode()
        req = urllib.request.Request(
            f"{stack.http}/v1/runs?text=1", data=data, method="POST", headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=60) as r:
            res = json.loads(r.read())
        assert res["stdout_encoding"] == "base64" and base64.b64decode(res["stdout"]) == "é".encode() + b"\xff"
        assert res["stderr"] == "" and res["stderr_encoding"] == "utf-8"
    finally:
        assert stack.stop() == 0, stack.output()
