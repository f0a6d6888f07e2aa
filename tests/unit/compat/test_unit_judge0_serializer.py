"""Judge0's serializer, pure: attribute order, formats, base64, and what cannot be UTF-8."""

from __future__ import annotations

import base64

import pytest
from compat_unit_util import done, request

from sandboxd.compat import judge0 as j0mod
from sandboxd.schema import JobInfo, RunResult


def test_every_attribute_in_the_serializers_order_and_format() -> None:
    req = request(stdin=b"in", additional_files=b"PK", callback_url="http://x/cb")
    r = RunResult("ok", exit_code=0, cpu_time=0.016, wall_time=0.25, memory=2048 * 1024, stdout=b"1\n")
    v = j0mod.view("tok", req, done(r), j0mod.ATTRIBUTES, False)
    assert tuple(v) == j0mod.ATTRIBUTES
    assert v["token"] == "tok" and v["source_code"] == "print(1)" and v["stdin"] == "in" and v["stdout"] == "1\n"
    assert v["status"] == {"id": 3, "description": "Accepted"} and v["status_id"] == 3
    assert v["language"] == {"id": 71, "name": "Python (1.2.3)"} and v["language_id"] == 71
    assert (v["time"], v["wall_time"], v["memory"]) == ("0.016", "0.25", 2048)
    assert (v["cpu_time_limit"], v["cpu_extra_time"], v["wall_time_limit"]) == ("5.0", "1.0", "10.0")
    assert v["created_at"] == "2023-11-14T22:13:20.250Z" and v["finished_at"] == "2023-11-14T22:13:21.500Z"
    assert v["additional_files"] == "UEs=\n" and v["callback_url"] == "http://x/cb" and v["memory_limit"] == 128000
    assert v["message"] is None and v["stderr"] is None and v["compile_output"] is None and v["exit_code"] == 0


def test_selection_keeps_the_serializers_order() -> None:
    v = j0mod.view("tok", request(), done(RunResult("ok", exit_code=0)), ("exit_code", "token", "stdout"), False)
    assert list(v) == ["stdout", "token", "exit_code"]
    assert list(j0mod.view("tok", request(), done(), j0mod.DEFAULT_FIELDS, False)) == [
        "stdout", "time", "memory", "stderr", "token", "compile_output", "message", "status",
    ]  # fmt: skip


def test_base64_and_text_that_is_not_utf8() -> None:
    info = done(RunResult("nonzero_exit", exit_code=3, stdout=b"\xff" * 50, stderr=b"e"))
    v = j0mod.view("tok", request(), info, ("stdout", "stderr", "message"), True)
    assert v["stdout"] == base64.b64encode(b"\xff" * 45).decode() + "\n" + base64.b64encode(b"\xff" * 5).decode() + "\n"
    assert base64.b64decode(v["message"]) == b"Exited with error status 3" and v["stderr"] == "ZQ==\n"
    with pytest.raises(UnicodeDecodeError):
        j0mod.view("tok", request(), info, ("stdout",), False)
    assert j0mod.view("tok", request(), info, ("stderr",), False) == {"stderr": "e"}


def test_a_pending_submission_has_no_finish() -> None:
    info = JobInfo("t", "submission", "running", created_at=1.0, finished_at=2.0)
    v = j0mod.view("tok", request(), info, ("status", "finished_at", "time", "created_at"), False)
    assert v == {
        "created_at": "1970-01-01T00:00:01.000Z",
        "finished_at": None,
        "time": None,
        "status": {"id": 2, "description": "Processing"},
    }
