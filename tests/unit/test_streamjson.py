"""A large JSON reply streamed (sandboxd.api.streamjson) is byte for byte the
document replies.encode builds whole, and its Content-Length is its length."""

from __future__ import annotations

import os

import pytest

from sandboxd.api import replies, streamjson
from sandboxd.schema import FileOut, JobInfo, RunResult, SubmissionResult

BIG = replies.LARGE + 1


@pytest.mark.parametrize(
    "payload",
    [
        RunResult(
            status="ok",
            stdout=os.urandom(3 * BIG),
            stderr=b'tricky "\x00\n\\ bytes',
            files=[
                FileOut("a", content=os.urandom(BIG + 2)),
                FileOut("b", error="\x00 no"),
                FileOut("c", content=b"c"),
            ],
            message="a \x00 in a message is escaped, never a raw NUL",
        ),
        JobInfo("j", "run", "done", RunResult(status="ok", stderr=os.urandom(7 << 20))),
        SubmissionResult("AC", runs=[RunResult(status="ok", stdout=os.urandom(BIG)), RunResult(status="ok")]),
        RunResult(status="ok", stdout=b"small"),
    ],
)
def test_the_streamed_document_is_the_whole_one(payload: object) -> None:
    segments, fields = streamjson.split(payload)
    body = b"".join(streamjson.pieces(segments, fields))
    assert body == replies.encode("json", payload)
    assert streamjson.length(segments, fields) == len(body)
