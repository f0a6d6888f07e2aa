"""Text mode's encoding of results, pure (sandboxd/api/textmode.py, replies.encode)."""

from __future__ import annotations

import base64

import msgspec
import pytest

from sandboxd.api import replies, textmode
from sandboxd.errors import ServiceError
from sandboxd.schema import FileOut, JobInfo, RunResult


def test_each_bytes_field_gets_its_marker() -> None:
    r = RunResult("ok", stdout="é\n".encode(), stderr=b"\xff", files=[FileOut("a", b"x"), FileOut("b", error="gone")])
    out = msgspec.json.decode(replies.encode("json", JobInfo("j", "run", "done", result=r), text=True))
    res = out["result"]
    assert (res["stdout"], res["stdout_encoding"]) == ("é\n", "utf-8")
    assert (res["stderr"], res["stderr_encoding"]) == (base64.b64encode(b"\xff").decode(), "base64")
    assert res["files"] == [
        {"path": "a", "content": "x", "content_encoding": "utf-8"},
        {"path": "b", "error": "gone"},
    ]


def test_large_strings_and_large_base64_encode_as_the_small_ones() -> None:
    big_text, big_bin = ('ü"\\\n' * 700_000).encode(), b"\xff" * (3 << 20)
    r = RunResult("ok", stdout=big_text, stderr=big_bin)
    res = msgspec.json.decode(replies.encode("json", r, text=True))
    assert res["stdout"] == big_text.decode() and res["stdout_encoding"] == "utf-8"
    assert base64.b64decode(res["stderr"]) == big_bin and res["stderr_encoding"] == "base64"


def test_msgpack_ignores_text_mode_and_default_is_unchanged() -> None:
    r = RunResult("ok", stdout=b"hi")
    assert replies.encode("msgpack", r, text=True) == msgspec.msgpack.encode(r)
    assert replies.encode("json", r) == msgspec.json.encode(r)


@pytest.mark.parametrize(("value", "on"), [("1", True), ("true", True), ("0", False), ("false", False)])
def test_the_parameter(value: str, on: bool) -> None:
    assert textmode.wanted({"text": value}) is on
    assert textmode.wanted({}) is False


def test_a_bad_value_names_the_parameter() -> None:
    with pytest.raises(ServiceError, match="text: must be"):
        textmode.wanted({"text": "yes"})
