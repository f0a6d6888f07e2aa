"""Every operation in the OpenAPI document, sent as its example says, to a real
daemon with the Judge0 and Piston APIs mounted: each must answer 2xx.

Bodies and query parameters come from the document's examples as they are; only
the ids of jobs (which exist once a POST created them) are filled in here.
"""

from __future__ import annotations

import asyncio
import json
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest
from daemon_util import Daemon
from instances import inst

TOKEN = "openapi-test-token"


@pytest.fixture(scope="module")
def daemon() -> Iterator[Daemon]:
    d = Daemon(inst("-openapi"), pool_size=2, env={"SANDBOXD_HTTP_TOKEN": TOKEN})
    yield d
    assert d.stop() == 0, d.output()


def call(d: Daemon, method: str, path: str, body: Any = None, raw: bytes | None = None) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {TOKEN}", "X-Auth-Token": TOKEN, "X-Auth-User": TOKEN}
    data = raw
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    elif raw is not None:
        headers["Content-Type"] = "application/octet-stream"
    req = urllib.request.Request(d.http + path, data, headers, method=method)
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            raw = r.read()
            status = r.status
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    ctype = r.headers.get("Content-Type", "")
    return status, json.loads(raw) if "json" in ctype and raw else raw


def websocket(d: Daemon, path: str, messages: list[dict[str, Any]]) -> list[Any]:
    """Send a WebSocket operation's example messages; everything the server answers until it closes."""

    async def go() -> list[Any]:
        got: list[Any] = []
        url = d.http.replace("http://", "ws://") + path
        headers = {"Authorization": f"Bearer {TOKEN}"}
        async with aiohttp.ClientSession() as http, http.ws_connect(url, headers=headers) as ws:
            for m in messages:
                await ws.send_str(json.dumps(m))
            async with asyncio.timeout(60):
                async for msg in ws:
                    got.append(json.loads(msg.data) if msg.type == aiohttp.WSMsgType.TEXT else msg.data)
        return got

    return asyncio.run(go())


def _url(path: str, op: dict[str, Any], ids: dict[str, str]) -> str:
    query = {}
    for p in op.get("parameters", []):
        value = ids.get(p["name"], p.get("example"))
        if p["in"] == "path":
            path = path.replace("{" + p["name"] + "}", urllib.parse.quote(str(value), safe=""))
        elif p["in"] == "query" and value is not None:  # (a parameter without an example: its default)
            query[p["name"]] = str(value)
    return path + ("?" + urllib.parse.urlencode(query) if query else "")


def test_every_example_answers_2xx(daemon: Daemon) -> None:
    status, doc = call(daemon, "GET", "/openapi.json")
    assert status == 200
    paths = doc["paths"]
    listed = {"/judge0/submissions", "/judge0/languages", "/piston/api/v2/execute", "/piston/api/v2/runtimes"}
    assert listed <= set(paths)
    # The ids the examples refer to: a native job and a Judge0 submission made by their examples.
    run = paths["/v1/runs"]["post"]["requestBody"]["content"]["application/json"]["example"]
    status, job = call(daemon, "POST", "/v1/runs?wait=false", run)
    assert status == 202, job
    j0 = paths["/judge0/submissions"]["post"]["requestBody"]["content"]["application/json"]["example"]
    status, sub = call(daemon, "POST", "/judge0/submissions?base64_encoded=false&wait=true", j0)
    assert status == 201, sub
    ids = {"job": job["job"], "token": sub["token"], "tokens": sub["token"]}
    sent = []
    # DELETEs last: they remove what the GETs read.
    ops = [(p, m, op) for p, item in paths.items() for m, op in item.items()]
    for path, method, op in sorted(ops, key=lambda o: o[1] == "delete"):
        if "x-websocket" in op:
            got = websocket(daemon, path, op["x-websocket"])
            assert got and not [m for m in got if isinstance(m, dict) and m.get("type") == "error"], (path, got)
            sent.append((method, path))
            continue
        bodies = op.get("requestBody", {}).get("content", {})
        content, octets = bodies.get("application/json"), bodies.get("application/octet-stream")
        assert all("example" in c for c in (content, octets) if c is not None), f"{method} {path}: no example"
        url = _url(path, op, ids)
        raw = None if octets is None else octets["example"].encode()
        status, answer = call(daemon, method.upper(), url, None if content is None else content["example"], raw)
        assert 200 <= status < 300, f"{method.upper()} {url} -> {status}: {answer!r}"
        sent.append((method, path))
    assert len(sent) == len(ops)
    # The examples do what they say, not merely 2xx.
    _, ran = call(daemon, "POST", "/v1/runs?text=1", run)
    assert ran["status"] == "ok" and ran["stdout"] == "hello world\n"
    sub_ex = paths["/v1/submissions"]["post"]["requestBody"]["content"]["application/json"]["example"]
    _, judged = call(daemon, "POST", "/v1/submissions", sub_ex)
    assert judged["verdict"] == "AC", judged
    assert sub["status"]["description"] == "Accepted", sub
    live = websocket(daemon, "/v1/sessions", paths["/v1/sessions"]["get"]["x-websocket"])
    assert live[-1]["type"] == "result" and live[-1]["result"]["status"] == "ok", live
    assert b"".join(m[1:] for m in live if isinstance(m, bytes) and m[:1] == b"\x01") == b"cba\n"
    piston = websocket(daemon, "/piston/api/v2/connect", paths["/piston/api/v2/connect"]["get"]["x-websocket"])
    assert {"type": "data", "stream": "stdout", "data": "hi\n"} in piston, piston


def test_the_event_stream_is_what_the_document_describes(daemon: Daemon) -> None:
    """POST /v1/submissions with Accept: text/event-stream: the events the daemon
    sends are the ones the document names, in its order, each data of its schema."""
    _, doc = call(daemon, "GET", "/openapi.json")
    post = doc["paths"]["/v1/submissions"]["post"]
    stream = post["responses"]["200"]["content"]["text/event-stream"]
    events = stream["x-events"]
    assert set(events) == {"accepted", "test", "result", "error"}
    example = post["requestBody"]["content"]["application/json"]["example"]
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json", "Accept": "text/event-stream"}
    req = urllib.request.Request(daemon.http + "/v1/submissions", json.dumps(example).encode(), headers, method="POST")
    with urllib.request.urlopen(req, timeout=60) as r:
        assert r.headers["Content-Type"].startswith("text/event-stream")
        text = r.read().decode()
    got = []
    for block in text.split("\n\n"):
        lines = dict(ln.split(": ", 1) for ln in block.splitlines() if ln and not ln.startswith(":"))
        if lines:
            got.append((lines["event"], json.loads(lines["data"])))
    names = [name for name, _ in got]
    assert set(names) <= set(events) and names[0] == "accepted" and names[-1] == "result", names
    assert "test" in names
    schemas = doc["components"]["schemas"]
    for name, data in got:
        ref = events[name].get("$ref")
        props = schemas[ref.rsplit("/", 1)[1]]["properties"] if ref else events[name]["properties"]
        assert set(data) <= set(props), (name, data)
    # The example in the document is in the format the daemon sends.
    described = [b.split("\n", 1)[0] for b in stream["example"].split("\n\n") if b]
    assert described == ["event: accepted", "event: test", "event: result"]
