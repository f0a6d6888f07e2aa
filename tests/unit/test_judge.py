"""The pure parts of the judge (sandboxd/judging/judge.py): run status to
verdict, and what a test's result keeps of its run.  Judging itself runs
real boxes: tests/judging/test_judge.py."""

from __future__ import annotations

from sandboxd.judging import judge
from sandboxd.judging.judge import CHECKER_REJECTS, PREVIEW, STATUS_VERDICT
from sandboxd.schema import STATUSES, VERDICTS, RunResult


def test_every_run_status_has_a_verdict() -> None:
    assert set(STATUS_VERDICT) == set(STATUSES)
    assert set(STATUS_VERDICT.values()) <= set(VERDICTS)
    assert STATUS_VERDICT["ok"] == "AC" and STATUS_VERDICT["internal_error"] == "IE"
    # Only the run's own failures; CE and WA come from the compiler and the checker.
    assert not {"CE", "WA"} & set(STATUS_VERDICT.values())


def test_testlib_exit_codes_reject() -> None:
    assert CHECKER_REJECTS == (1, 2)  # WA and presentation error; other codes: the checker failed


def test_a_test_result_keeps_a_preview_and_the_runs_numbers() -> None:
    run = RunResult(
        status="ok", exit_code=0, cpu_time=0.5, wall_time=0.7, memory=123, stdout=b"o" * (PREVIEW + 1), stderr=b"e"
    )
    r = judge.test_result(3, "WA", run, "token 1")
    assert (r.index, r.verdict, r.time, r.wall_time, r.memory, r.exit_code) == (3, "WA", 0.5, 0.7, 123, 0)
    assert r.stdout == b"o" * PREVIEW and r.stderr == b"e" and r.message == "token 1"
    # Without a checker's message, the run's own explanation is kept.
    assert judge.test_result(0, "IE", RunResult(status="internal_error", message="agent lost")).message == "agent lost"
