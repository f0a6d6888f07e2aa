"""The job schema: every bad field is named in the error, nothing slips through."""

from __future__ import annotations

import msgspec
import pytest

from sandboxd.schema import RunRequest, SchemaError, decode_run


def test_round_trip_json_and_msgpack() -> None:
    req = {"cmd": ["python3", "main.py"], "stdin": "aGk=", "limits": {"cpu_time": 1.5, "memory": 64 << 20}}
    a = decode_run(msgspec.json.encode(req))
    assert a.cmd == ["python3", "main.py"] and a.stdin == b"hi"
    assert a.limits.cpu_time == 1.5 and a.limits.wall == 4.0
    b = decode_run(msgspec.msgpack.encode({**req, "stdin": b"hi"}), "msgpack")
    assert b == a


@pytest.mark.parametrize(
    ("job", "where"),
    [
        ({}, "cmd"),
        ({"cmd": []}, "$.cmd"),
        ({"cmd": ["x"], "limits": {"cpu_time": -1}}, "$.limits.cpu_time"),
        ({"cmd": ["x"], "limits": {"memory": 1}}, "$.limits.memory"),
        ({"cmd": ["x"], "limits": {"cpu_time": 1e9}}, "$.limits.cpu_time"),
        ({"cmd": ["x"], "limits": {"procs": 0}}, "$.limits.procs"),
        ({"cmd": ["x"], "limit": {}}, "limit"),
        ({"cmd": ["x"], "files_in": [{"path": "../etc/passwd"}]}, "files_in[0].path"),
        ({"cmd": ["x"], "files_in": [{"path": "/etc/passwd"}]}, "files_in[0].path"),
        ({"cmd": ["x"], "files_in": [{"path": "a"}, {"path": "./a"}]}, "files_in[1].path"),
        ({"cmd": ["x"], "files_out": ["a/../../b"]}, "files_out[0]"),
        ({"cmd": ["a\u0000b"]}, "cmd[0]"),
        ({"cmd": ["x"], "env": {"A=B": "c"}}, "env"),
        ({"cmd": ["x" * 300_000]}, "cmd+env"),
        ({"cmd": ["x"], "cwd": "box"}, "cwd"),
        ({"cmd": ["x"], "stdin": "not base64!"}, "$.stdin"),
    ],
)
def test_bad_jobs_name_the_field(job: dict[str, object], where: str) -> None:
    with pytest.raises(SchemaError) as e:
        decode_run(msgspec.json.encode(job))
    assert where in str(e.value)


def test_malformed_bytes() -> None:
    with pytest.raises(SchemaError, match="malformed json"):
        decode_run(b"{")
    with pytest.raises(SchemaError, match="malformed msgpack"):
        decode_run(b"\xc1", "msgpack")


def test_defaults() -> None:
    r = RunRequest(cmd=["true"])
    assert (r.limits.cpu_time, r.limits.wall, r.limits.memory, r.limits.procs) == (2.0, 5.0, 256 << 20, 64)
