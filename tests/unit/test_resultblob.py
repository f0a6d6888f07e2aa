"""A large result is stored split (sandboxd.jobs.resultblob): its large bytes
fields taken out and put back where they were, of any result kind, nested."""

from __future__ import annotations

import os

from sandboxd import schema
from sandboxd.engine.budget import nbytes
from sandboxd.jobs import resultblob
from sandboxd.jobs.resultblob import SPLIT_FROM
from sandboxd.jobs.store import Split
from sandboxd.schema import Error, FileOut, JobInfo, RunResult, SubmissionResult

BIG = SPLIT_FROM


def roundtrip(info: JobInfo) -> tuple[JobInfo, Split]:
    size = nbytes(info.result) if info.result is not None else 0
    data = resultblob.encode(info, size)
    assert isinstance(data, Split)
    # (the store hands it back as it wrote it: head, index, pieces, each its own bytes)
    return resultblob.decode(Split(bytes(data.head), bytes(data.index), [bytes(p) for p in data.pieces])), data


def test_a_run_result_s_large_fields_come_back_in_place_and_small_ones_stay_in_the_head() -> None:
    files = [FileOut("a", content=os.urandom(BIG)), FileOut("b", error="no such file"), FileOut("c", content=b"x")]
    res = RunResult(status="ok", stdout=os.urandom(BIG + 1), stderr=b"warn", files=files)
    info = JobInfo("j", "run", "done", res, created_at=1.0, finished_at=2.0)
    back, data = roundtrip(info)
    assert back == info
    assert len(data.pieces) == 2 and len(data.head) < 1024  # stdout and file a; the rest in the head
    assert (
        res.stdout and len(res.files[0].content or b"") == BIG
    )  # (the job's own result untouched: the head is a copy)


def test_a_submission_s_tests_and_runs_are_split_too() -> None:
    tests = [schema.TestResult(i, "AC", stdout=os.urandom(BIG) if i % 2 else b"ok") for i in range(4)]
    runs = [RunResult(status="ok", stdout=os.urandom(BIG)), RunResult(status="ok", stderr=os.urandom(BIG))]
    res = SubmissionResult("AC", compile=RunResult(status="ok", stderr=os.urandom(BIG)), tests=tests, runs=runs)
    info = JobInfo("s", "submission", "done", res)
    back, data = roundtrip(info)
    assert back == info and len(data.pieces) == 5


def test_small_and_result_less_infos_are_one_plain_encode() -> None:
    small = JobInfo("j", "run", "done", RunResult(status="ok", stdout=b"x" * 100))
    assert isinstance(resultblob.encode(small, nbytes(small.result)), bytes)
    failed = JobInfo("f", "run", "failed", error=Error("internal", "boom"))
    assert resultblob.decode(resultblob.encode(failed, 0)) == failed
    # A large total with no single large field: nothing to take out, one encode.
    many = JobInfo(
        "m", "run", "done", RunResult(status="ok", files=[FileOut(str(i), content=b"y" * 1000) for i in range(70)])
    )
    assert isinstance(resultblob.encode(many, nbytes(many.result)), bytes)
