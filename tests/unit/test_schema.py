"""The job schema: every bad field is named in the error, nothing slips through."""

from __future__ import annotations

import posixpath

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sandboxd.schema import (
    MAX_CPU_TIME,
    MAX_FILE_SIZE,
    MAX_MEMORY,
    MAX_NAME,
    MAX_OUTPUT,
    MAX_PATH,
    MAX_PROCS,
    MAX_TESTS,
    MAX_WALL_TIME,
    KiB,
    Limits,
    LimitsPatch,
    MiB,
    RunRequest,
    RunResult,
    SchemaError,
    Submission,
    SubmissionResult,
    check_box_path,
    decode_run,
    validate_run,
    validate_submission,
)


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


def test_files_out_duplicates_refused_by_schema() -> None:
    with pytest.raises(SchemaError, match=r"files_out\[1\].*given twice"):
        validate_run(RunRequest(cmd=["true"], files_out=["a/b", "a//b"]))


# Each limit at its bound is accepted, one step beyond it is refused naming the field.
LIMIT_BOUNDS = [
    ("cpu_time", MAX_CPU_TIME, MAX_CPU_TIME * 1.01),
    ("wall_time", MAX_WALL_TIME, MAX_WALL_TIME * 1.01),
    ("memory", 4 * MiB, 4 * MiB - 1),
    ("memory", MAX_MEMORY, MAX_MEMORY + 1),
    ("procs", 1, 0),
    ("procs", MAX_PROCS, MAX_PROCS + 1),
    ("output", 0, -1),
    ("output", MAX_OUTPUT, MAX_OUTPUT + 1),
    ("file_size", MAX_FILE_SIZE, MAX_FILE_SIZE + 1),
    ("open_files", 16, 15),
    ("open_files", 1 << 20, (1 << 20) + 1),
    ("stack", 64 * KiB, 64 * KiB - 1),
]


@pytest.mark.parametrize(("name", "ok", "bad"), LIMIT_BOUNDS)
def test_limits_bounds(name: str, ok: float, bad: float) -> None:
    job = {"cmd": ["x"], "limits": {name: ok}}
    assert getattr(decode_run(msgspec.json.encode(job)).limits, name) == ok
    with pytest.raises(SchemaError, match=rf"\$\.limits\.{name}"):
        decode_run(msgspec.json.encode({"cmd": ["x"], "limits": {name: bad}}))


def test_wall_time_follows_cpu_time_unless_given() -> None:
    assert Limits(cpu_time=3.0).wall == 7.0
    assert Limits(cpu_time=3.0, wall_time=4.0).wall == 4.0


def test_a_limits_patch_changes_only_what_it_sets() -> None:
    base = Limits(cpu_time=1.0, memory=64 * MiB, procs=8)
    assert LimitsPatch().apply(base) is base
    got = LimitsPatch(memory=128 * MiB, output=0).apply(base)
    assert (got.cpu_time, got.memory, got.procs, got.output) == (1.0, 128 * MiB, 8, 0)


@pytest.mark.parametrize(
    ("path", "why"),
    [
        ("", "non-empty"),
        ("a\0b", "NUL"),
        ("a\udc80", "UTF-8"),  # a lone surrogate (what a non-UTF-8 name decodes to)
        ("x" * (MAX_NAME + 1), "component"),
        ("a/" * (MAX_PATH // 2) + "b", "bytes"),
        ("/etc", "relative"),
        ("..", "inside"),
        ("a/../..", "inside"),
    ],
)
def test_box_paths_refused(path: str, why: str) -> None:
    with pytest.raises(SchemaError, match=why):
        check_box_path(path, "p")


def test_box_paths_normalized() -> None:
    assert check_box_path("./a//b/", "p") == "a/b"
    assert check_box_path("a/../b", "p") == "b"
    assert check_box_path("x" * MAX_NAME, "p") == "x" * MAX_NAME


@settings(max_examples=100, deadline=None, database=None)
@given(st.text(alphabet=st.sampled_from("ab./\\\0"), max_size=12) | st.text(max_size=12))
def test_a_box_path_never_leaves_the_box(path: str) -> None:
    try:
        norm = check_box_path(path, "p")
    except SchemaError:
        return
    assert norm == posixpath.normpath(norm) and not norm.startswith("/") and "\0" not in norm
    assert ".." not in norm.split("/") and norm != "."
    assert posixpath.normpath(posixpath.join("/box", norm)).startswith("/box/")


@pytest.mark.parametrize(
    ("cwd", "ok"), [("/box", True), ("/", True), ("/tmp/../box", True), ("box", False), ("/a\0", False)]
)
def test_cwd_is_absolute_in_the_box(cwd: str, ok: bool) -> None:
    job = msgspec.json.encode({"cmd": ["x"], "cwd": cwd})
    if ok:
        assert decode_run(job).cwd == cwd
    else:
        with pytest.raises(SchemaError, match="cwd"):
            decode_run(job)


def _submission(**kw: object) -> Submission:
    return msgspec.convert({"lang": "c", "source": "", "tests": [{}], **kw}, Submission)


@pytest.mark.parametrize(
    ("fields", "where"),
    [
        ({"checker": {"kind": "custom"}}, "checker.program: required"),
        ({"checker": {"kind": "exact", "program": {"lang": "c", "source": ""}}}, "checker.program: only"),
        ({"files": [{"path": "a.h"}, {"path": "./a.h"}]}, r"files\[1\].path"),
        ({"files": [{"path": "../a.h"}]}, r"files\[0\].path"),
        ({"compile_options": ["-O2", "-D\0"]}, r"compile_options\[1\]"),
    ],
)
def test_bad_submissions_name_the_field(fields: dict[str, object], where: str) -> None:
    with pytest.raises(SchemaError, match=where):
        validate_submission(_submission(**fields))


@pytest.mark.parametrize("n", [0, MAX_TESTS + 1])
def test_a_submission_has_1_to_max_tests_tests(n: int) -> None:
    with pytest.raises(msgspec.ValidationError, match=r"\$\.tests"):
        msgspec.convert({"lang": "c", "source": "", "tests": [{}] * n}, Submission)
    assert len(_submission(tests=[{}] * MAX_TESTS).tests) == MAX_TESTS


def test_results_decode_to_their_kind() -> None:
    run = RunResult(status="ok", stdout=b"x")
    sub = SubmissionResult(verdict="AC", compile=run)
    for fmt in (msgspec.json, msgspec.msgpack):
        assert fmt.decode(fmt.encode([run, sub]), type=list[RunResult | SubmissionResult]) == [run, sub]
