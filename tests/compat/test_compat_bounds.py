"""Limits on input of the Judge0/Piston APIs (issue 13): bad zips, bad JSON, fuzzing.

On 9a299e5 a NUL or over-long zip entry name, deep JSON nesting or an
out-of-range number were internal errors (HTTP 500 / Judge0 status 13);
hypothesis now fuzzes both APIs as tests/api/test_fuzz.py does the native one: no
500, ever.  The zip parsing itself: tests/unit/compat/test_unit_compat_archive.py.
"""

from __future__ import annotations

import base64
import urllib.error
import urllib.request
from collections.abc import Iterator

import msgspec
import pytest
from daemon_util import Daemon, json_http
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from instances import inst
from zips import nul_name_zip, zip_bytes

from sandboxd.compat.archive import MAX_EXTRACT_FILES


@pytest.fixture(scope="module")
def daemon() -> Iterator[Daemon]:
    d = Daemon(inst("-bounds-compat"), pool_size=2, env={"SANDBOXD_MAX_BODY": str(4 << 20)})
    yield d
    assert d.stop() == 0, d.output()


# --- the compat APIs: bad input is 4xx with the reason, never a 500 ------------


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


PY = "print(1)\n"


@pytest.mark.parametrize(
    ("zipped", "why"),
    [
        (nul_name_zip(), "empty name"),
        (zip_bytes({"a" * 300: b"x"}), "300 bytes"),
        (zip_bytes({f"f{i}": b"" for i in range(MAX_EXTRACT_FILES + 1)}), "1001 entries"),
    ],
)
def test_judge0_bad_zips_are_422(daemon: Daemon, zipped: bytes, why: str) -> None:
    body = {"source_code": PY, "language_id": 71, "additional_files": _b64(zipped)}
    status, reply = json_http(daemon, "POST", "/judge0/submissions?wait=true", body)
    assert status == 422, reply
    assert any(why in m for m in reply["additional_files"]), reply


@pytest.mark.parametrize(
    "raw",
    [
        b'{"source_code": "x", "language_id": ' + b"[" * 5000 + b"]" * 5000 + b"}",
        b'{"source_code": "x", "language_id": 1e400}',
        b'{"source_code": "x", "language_id": 71, "stdin": -1e999}',
        b'{"source_code": "\xff", "language_id": 71}',  # not UTF-8 (was a 500)
    ],
)
def test_judge0_bad_json_is_400(daemon: Daemon, raw: bytes) -> None:
    status, reply = json_http(daemon, "POST", "/judge0/submissions", raw=raw)
    assert status == 400, reply
    assert "invalid JSON body" in reply["error"]


def test_piston_bad_input_is_400(daemon: Daemon) -> None:
    deep = b'{"language": "python", "version": "*", "files": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    status, reply = json_http(daemon, "POST", "/piston/api/v2/execute", raw=deep)
    assert status == 400 and "nested deeper" in reply["message"], reply
    files = [{"content": PY}, {"name": "n" * 300, "content": "x"}]
    body = {"language": "python", "version": "*", "files": files}
    status, reply = json_http(daemon, "POST", "/piston/api/v2/execute", body)
    assert status == 400 and "files[1].name" in reply["message"] and "300 bytes" in reply["message"], reply
    status, reply = json_http(
        daemon, "POST", "/piston/api/v2/execute", raw=b'{"language": "python", "version": "*", "run_timeout": 1e400}'
    )
    assert status == 400, reply
    not_utf8 = b'{"language": "python", "version": "*", "files": [{"content": "\xff"}]}'
    status, reply = json_http(daemon, "POST", "/piston/api/v2/execute", raw=not_utf8)
    assert status == 400 and "invalid" in reply["message"].lower(), reply


# Fuzzing the compat endpoints as tests/api/test_fuzz.py does the native ones: no 500, ever.
SETTINGS = settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck), database=None)
ints = st.integers(-(2**70), 2**70)  # beyond int64, as JSON can carry
scalars = st.none() | st.booleans() | ints | st.floats() | st.text(max_size=20)
values = st.recursive(scalars, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=8), c, max_size=3))
names = st.text(max_size=12) | st.sampled_from(["a" * 300, "\0x", "../x", "/abs", "d/" + "é" * 200, ""])
zips = st.dictionaries(names.filter(bool), st.binary(max_size=8), max_size=3).map(
    lambda d: _b64(zip_bytes({k.replace("\0", "") or "x": v for k, v in d.items()}))
)
judge0_bodies = st.fixed_dictionaries(
    {
        "source_code": st.sampled_from([PY, "", "x"]) | st.text(max_size=20),
        "language_id": st.sampled_from([71, 50, -1]),
    },
    optional={
        "stdin": values,
        "cpu_time_limit": values,
        "memory_limit": values,
        "max_file_size": values,
        "number_of_runs": st.integers(-2, 3) | values,
        "command_line_arguments": st.text(max_size=20),
        "compiler_options": values,
        "additional_files": zips | st.text(max_size=20) | st.sampled_from([_b64(nul_name_zip())]),
        "redirect_stderr_to_stdout": values,
        "callback_url": st.sampled_from(["http://127.0.0.1:1/x", "ftp://x", ""]) | values,
    },
)
piston_files = st.lists(
    st.fixed_dictionaries(
        {"content": st.sampled_from([PY]) | st.text(max_size=10)},
        optional={"name": names | values, "encoding": st.sampled_from(["utf8", "base64", "hex", "bogus"]) | values},
    ),
    max_size=3,
)
piston_bodies = st.fixed_dictionaries(
    {"language": st.sampled_from(["python", "c", "nope"]) | values, "version": st.sampled_from(["*", "3", "x"])},
    optional={
        "files": piston_files | values,
        "stdin": values,
        "args": st.lists(values, max_size=3) | values,
        "run_timeout": values,
        "compile_memory_limit": values,
        "run_cpu_time": values,
    },
)


def _no_5xx(d: Daemon, path: str, raw: bytes) -> None:
    req = urllib.request.Request(d.http + path, data=raw, method="POST", headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            assert r.status < 300
    except urllib.error.HTTPError as e:
        body = e.read()
        # 503 only as the APIs' own "queue is full" (a fuzzer can fill a pool of 2).
        assert e.code < 500 or (e.code == 503 and b"full" in body), (e.code, body[:300])


@SETTINGS
@given(body=judge0_bodies.map(msgspec.json.encode) | values.map(msgspec.json.encode) | st.binary(max_size=100))
def test_fuzz_judge0(daemon: Daemon, body: bytes) -> None:
    _no_5xx(daemon, "/judge0/submissions", body)


@SETTINGS
@given(body=piston_bodies.map(msgspec.json.encode) | values.map(msgspec.json.encode) | st.binary(max_size=100))
def test_fuzz_piston(daemon: Daemon, body: bytes) -> None:
    _no_5xx(daemon, "/piston/api/v2/execute", body)
