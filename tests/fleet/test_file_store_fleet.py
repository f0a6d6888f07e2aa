"""The file store through the fleet: a real redis-server, a coordinator and two
hosts.  Files are uploaded to the coordinator (into Redis), a host fetches
what it lacks and keeps it, an unknown hash is refused before it is queued, and
a program compiled on one host is not compiled again on the other."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from typing import Any

import msgspec
import pytest
import redis.asyncio as aioredis
from daemon_util import Daemon
from fleet_util import Fleet, Host
from instances import inst
from sandboxd_client import Client, Submission
from sandboxd_client import TestCase as Case  # (not Test*: pytest would collect it)

from sandboxd.errors import ServiceError
from sandboxd.fleet.files import RedisFiles

ENV = {"SANDBOXD_FLEET_LEASE": "2", "SANDBOXD_FLEET_HEARTBEAT": "0.5", "SANDBOXD_DRAIN_TIMEOUT": "1"}


def tagged_host(name: str) -> Host:
    """A host taking only jobs tagged with its name, with a file store of its own."""
    env = {
        **ENV,
        "SANDBOXD_FLEET_HOST_ID": name,
        "SANDBOXD_FLEET_TAGS": f'["{name}"]',
        "SANDBOXD_FLEET_ONLY_TAGGED": "true",
        "SANDBOXD_FILES_DIR": tempfile.mkdtemp(prefix=f"sandboxd-files-{name}-"),
    }
    return Host(inst(f"-ffiles-{name}"), 1, env)


@pytest.fixture(scope="module")
def fleet() -> Iterator[Fleet]:
    f = Fleet({name: tagged_host(name) for name in ("one", "two")}, ENV)
    yield f
    f.stop()


def http(base: str, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(base + path, data=body, method=method)
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def coord(f: Fleet) -> str:
    assert f.coord is not None
    return f.coord.http


def put(f: Fleet, data: bytes) -> str:
    sha = hashlib.sha256(data).hexdigest()
    st, raw = http(coord(f), "PUT", f"/v1/files/{sha}", data)
    assert st in (200, 201), raw
    return sha


def submit(f: Fleet, sub: dict[str, Any]) -> tuple[int, Any]:
    st, raw = http(coord(f), "POST", "/v1/submissions", msgspec.json.encode(sub))
    return st, msgspec.json.decode(raw)


def compiles(d: Daemon) -> dict[str, float]:
    raw = http(d.http, "GET", "/metrics")[1].decode()
    rows = [line for line in raw.splitlines() if line.startswith("sandboxd_compiles{")]
    return {line.split('"')[1]: float(line.split()[-1]) for line in rows}


def test_upload_to_the_coordinator_and_refusals(fleet: Fleet) -> None:
    data = b"x" * (3 << 20)  # (more than one 1 MiB chunk each way)
    sha = put(fleet, data)
    assert http(coord(fleet), "HEAD", f"/v1/files/{sha}")[0] == 200
    assert http(coord(fleet), "GET", f"/v1/files/{sha}") == (200, data)
    st, raw = http(coord(fleet), "PUT", f"/v1/files/{'0' * 64}", b"other bytes")
    assert st == 400 and "0" * 64 in msgspec.json.decode(raw)["error"]["message"]
    unknown = "d" * 64
    st, body = submit(fleet, {"lang": "bash", "source_sha256": unknown, "tests": [{"input": ""}], "host_tag": "one"})
    assert st == 400 and "source_sha256" in body["error"]["message"] and unknown in body["error"]["message"]


def test_a_host_fetches_what_it_lacks_and_keeps_it(fleet: Fleet) -> None:
    src = put(fleet, b"read a b; echo $((a * b))\n")
    i, e = put(fleet, b"6 7\n"), put(fleet, b"42\n")
    one = fleet.hosts["one"]
    assert http(one.http, "HEAD", f"/v1/files/{i}")[0] == 404
    sub = {
        "lang": "bash",
        "source_sha256": src,
        "tests": [{"input_sha256": i, "expected_sha256": e}],
        "host_tag": "one",
    }
    st, res = submit(fleet, sub)
    assert st == 200 and res["verdict"] == "AC", res
    for sha in (src, i, e):  # fetched from the fleet, checked, kept on the host's disk
        assert http(one.http, "HEAD", f"/v1/files/{sha}")[0] == 200
    assert http(fleet.hosts["two"].http, "HEAD", f"/v1/files/{i}")[0] == 404


def test_a_second_host_does_not_compile_again(fleet: Fleet) -> None:
    src = b'#include <stdio.h>\nint main(void) { printf("%d\\n", ' + str(time.time_ns()).encode() + b" % 7); }\n"
    sub: dict[str, Any] = {"lang": "c", "source": base64.b64encode(src).decode(), "tests": [{"input": ""}]}
    one, two = fleet.hosts["one"], fleet.hosts["two"]
    b1, b2 = compiles(one), compiles(two)
    st, res = submit(fleet, {**sub, "host_tag": "one"})
    assert st == 200 and res["verdict"] == "AC", res
    st, res2 = submit(fleet, {**sub, "host_tag": "two"})
    assert st == 200 and res2["verdict"] == "AC", res2
    a1, a2 = compiles(one), compiles(two)
    assert a1["compiled"] - b1.get("compiled", 0) == 1
    assert a2.get("compiled", 0) - b2.get("compiled", 0) == 0 and a2["hit"] - b2.get("hit", 0) == 1
    assert res2["tests"][0]["stdout"] == res["tests"][0]["stdout"]


def test_the_coordinators_socket_files_op_and_python_client(fleet: Fleet) -> None:
    assert fleet.coord is not None
    data = b"via the coordinator's socket\n"
    with Client(f"unix://{fleet.coord.sock}") as c:
        sha = hashlib.sha256(data).hexdigest()
        assert not c.has_file(sha)
        assert c.upload(data) == sha and c.has_file(sha) and c.download(sha) == data
        res = c.submit(
            Submission(lang="bash", source=b"cat\n", tests=[Case(input_sha256=sha, expected=data)], host_tag="two")
        )
        assert res.verdict == "AC", res
    assert http(coord(fleet), "GET", f"/v1/files/{sha}") == (200, data)


def test_the_fleets_store_evicts_by_bytes_but_keeps_recently_named_files(fleet: Fleet) -> None:
    """RedisFiles on its own prefix of the same redis-server: 1 MiB in all, three 400 KiB files."""

    async def scenario() -> None:
        r = aioredis.Redis.from_url(fleet.redis.url)
        try:
            old = RedisFiles(r, "{evict-old}", max_bytes=1 << 20, max_file=1 << 20, keep=0.0)
            kept = RedisFiles(r, "{evict-kept}", max_bytes=1 << 20, max_file=1 << 20, keep=3600.0)
            a, b, c = (bytes([65 + i]) * (400 << 10) for i in range(3))
            ha, hb, hc = (hashlib.sha256(x).hexdigest() for x in (a, b, c))
            for store in (old, kept):
                for x, h in ((a, ha), (b, hb)):
                    assert await store.put_file(h, chunks(x)) is True
            await old.check_refs(Submission(lang="c", source_sha256=ha, tests=[Case()]))  # a: named again
            assert await old.put_file(hc, chunks(c)) is True  # b, least recently named, goes
            assert [await old.file_size(h) for h in (ha, hb, hc)] == [len(a), None, len(c)]
            with pytest.raises(ServiceError) as e:  # all named within fleet_keep: refused, nothing lost
                await kept.put_file(hc, chunks(c))
            assert e.value.err.code == "queue_full" and await kept.file_size(hb) == len(b)
            with pytest.raises(ServiceError) as e:
                await old.check_refs(Submission(lang="c", tests=[Case(input_sha256=hb)]))
            assert "tests[0].input_sha256" in str(e.value) and hb in str(e.value)
        finally:
            await r.aclose()

    asyncio.run(scenario())


async def chunks(data: bytes) -> AsyncIterator[bytes]:
    for i in range(0, len(data), 100_000):
        yield data[i : i + 100_000]


def test_by_hash_jobs_go_only_to_hosts_that_decode_them(fleet: Fleet) -> None:
    """Rolling upgrade: a host of a version before the file store cannot decode a
    spec naming files by hash.  Such a job waits in a queue of its own
    (keys.HASH_QUEUE: a name an older host never claims from) and is refused
    while no live host that would take it advertises `by_hash`."""
    from sandboxd.fleet.keys import BY_HASH, HASH_QUEUE, Keys, queue_name
    from sandboxd.fleet.store import FleetStore

    data = b"by hash\n"
    sha = put(fleet, data)
    by_hash = {"lang": "bash", "source": base64.b64encode(b"cat\n").decode(), "tests": [{"input_sha256": sha}]}
    # A current host decodes it: queued apart, claimed, run.
    st, raw = http(
        coord(fleet), "POST", "/v1/submissions?wait=false", msgspec.json.encode({**by_hash, "host_tag": "one"})
    )
    assert st == 202, raw
    job = msgspec.json.decode(raw)["job"]
    keys = Keys("sandboxd")
    assert fleet.redis.client().hget(keys.job(job), "queue") == queue_name("bash", "one", by_hash=True).encode()
    assert queue_name("bash", "one", by_hash=True).endswith(HASH_QUEUE)
    deadline = time.monotonic() + 60
    while (info := msgspec.json.decode(http(coord(fleet), "GET", f"/v1/jobs/{job}?wait=5")[1]))["state"] != "done":
        assert time.monotonic() < deadline, info
    assert info["result"]["verdict"] == "AC" and base64.b64decode(info["result"]["tests"][0]["stdout"]) == data

    # An older host (its heartbeat entry as that version writes it: no by_hash) is the only one tagged "old".
    hosts = msgspec.json.decode(http(coord(fleet), "GET", "/v1/hosts")[1])
    assert all(h.get(BY_HASH) is True for h in hosts)
    mine = next(h for h in hosts if h["id"] == "one")
    old = {k: mine[k] for k in ("languages", "pools", "capacity", "load", "running")}

    async def register() -> None:
        store = FleetStore(fleet.redis.url)
        try:
            await store.register("old-host", "old-session", 60.0, {**old, "tags": ["old"], "only_tagged": True})
        finally:
            await store.close()

    asyncio.run(register())
    try:
        deadline = time.monotonic() + 10
        while True:  # (the coordinator reads the hosts again within a second)
            st, raw = queue(fleet, {**by_hash, "host_tag": "old"})
            if b"host_tag: no live host" not in raw:
                break
            assert time.monotonic() < deadline, raw
        err = msgspec.json.decode(raw)["error"]
        assert st == 400 and err["code"] == "bad_request", (st, raw)
        assert err["message"].startswith("tests[0].input_sha256: ") and "by hash" in err["message"], err
        # The same job with its bytes inline is the older host's to take.
        inline = {**by_hash, "tests": [{"input": base64.b64encode(data).decode()}], "host_tag": "old"}
        st, raw = queue(fleet, inline)
        assert st == 202, raw
        queued = msgspec.json.decode(raw)["job"]
        assert fleet.redis.client().hget(keys.job(queued), "queue") == queue_name("bash", "old").encode()
        assert http(coord(fleet), "DELETE", f"/v1/jobs/{queued}")[0] == 200
    finally:
        r = fleet.redis.client()
        r.zrem(keys.hosts, "old-host")
        r.delete(keys.host("old-host"))


def queue(f: Fleet, sub: dict[str, Any]) -> tuple[int, bytes]:
    return http(coord(f), "POST", "/v1/submissions?wait=false", msgspec.json.encode(sub))
