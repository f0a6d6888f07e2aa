"""What makes two requests "the same" for an idempotency key
(sandboxd/jobs/fingerprint.py): the decoded request, not its bytes."""

from __future__ import annotations

import msgspec
import pytest

from sandboxd.jobs.fingerprint import fingerprint
from sandboxd.schema import RunRequest, Submission, TestCase, decode_run

REQ = {"cmd": ["python3", "-c", "print(1)"], "env": {"A": "1", "B": "2"}, "limits": {"memory": 64 << 20, "procs": 4}}


def test_the_same_request_in_any_key_order_or_encoding_is_the_same() -> None:
    shuffled = {"limits": {"procs": 4, "memory": 64 << 20}, "env": {"B": "2", "A": "1"}, "cmd": REQ["cmd"]}
    a = fingerprint("run", decode_run(msgspec.json.encode(REQ)), None)
    assert fingerprint("run", decode_run(msgspec.json.encode(shuffled)), None) == a
    assert fingerprint("run", decode_run(msgspec.msgpack.encode(shuffled), "msgpack"), None) == a
    assert len(a) == 32  # sha256


@pytest.mark.xfail(
    strict=True,
    reason="known bug, reported: msgspec's omit_defaults omits a str/float/large-int field only when it is the "
    "default object itself, so a default spelt out on the wire (cwd '/box', limits.memory 256 MiB) is encoded "
    "and the same request gets another fingerprint (an idempotency-key conflict on a retry that spells it out)",
)
@pytest.mark.parametrize(
    "spelt_out", [{"cwd": "/box"}, {"limits": {"memory": 256 << 20}}, {"limits": {"cpu_time": 2.0}}]
)
def test_a_default_spelt_out_is_the_same_request(spelt_out: dict[str, object]) -> None:
    plain = decode_run(msgspec.json.encode({"cmd": ["x"]}))
    given = decode_run(msgspec.json.encode({"cmd": ["x"], **spelt_out}))
    assert given == plain  # the same request, as the daemon runs it...
    assert fingerprint("run", given, None) == fingerprint("run", plain, None)  # ...so the same fingerprint


def test_anything_that_changes_the_job_changes_it() -> None:
    base = decode_run(msgspec.json.encode(REQ))
    fp = fingerprint("run", base, None)
    others = [
        fingerprint("run", RunRequest(cmd=["python3", "-c", "print(2)"]), None),
        fingerprint("run", msgspec.structs.replace(base, stdin=b"x"), None),
        fingerprint("run", base, "http://example.org/done"),  # where the result goes is part of the request
        fingerprint("submit", base, None),
        fingerprint("submit", Submission(lang="c", source=b"", tests=[TestCase()]), None),
    ]
    assert fp not in others and len(set(others)) == len(others)
