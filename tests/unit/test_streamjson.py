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


def test_a_large_field_is_written_a_small_chunk_at_a_time() -> None:
    """Each piece is one slice of the event loop (its base64 made there, holding
    the GIL): a 9 MiB field goes in pieces of at most B64_CHUNK's base64, not
    in megabytes at once, and they still make the whole document."""
    payload = RunResult(status="ok", stdout=os.urandom(9 << 20))
    segments, fields = streamjson.split(payload)
    pieces = list(streamjson.pieces(segments, fields))
    assert max(len(p) for p in pieces) <= max(4 * replies.B64_CHUNK // 3, *(len(s) + 1 for s in segments))
    assert replies.B64_CHUNK <= 256 << 10 and replies.B64_CHUNK % 3 == 0
    assert len(pieces) >= (9 << 20) // replies.B64_CHUNK
    assert b"".join(pieces) == replies.encode("json", payload)
