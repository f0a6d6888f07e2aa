"""Judge0's status mapping, pure: how a run ended -> (status, exit_code, exit_signal,
message), the comparison rule, and the outcome a GET shows for each job state."""

from __future__ import annotations

import pytest
from compat_unit_util import done, request

from sandboxd.compat import judge0 as j0mod
from sandboxd.compat.judge0.status import outcome
from sandboxd.schema import Error, JobInfo, RunResult


def test_judge_run_mapping_of_every_status() -> None:
    req = j0mod.Request(
        language_id=71, lang="python3", source_code=b"", stdin=None, expected_output=b"x", compiler_options=None,
        command_line_arguments=None, number_of_runs=1, cpu_time_limit=1.0, cpu_extra_time=0.5, wall_time_limit=3,
        memory_limit=128000, stack_limit=64000, max_processes_and_or_threads=60,
        enable_per_process_and_thread_time_limit=False, enable_per_process_and_thread_memory_limit=False,
        max_file_size=1024, redirect_stderr_to_stdout=False, callback_url=None, additional_files=None,
        enable_network=False,
    )  # fmt: skip
    cases = [
        (RunResult("ok", exit_code=0, stdout=b"x \n"), (3, 0, None, None)),
        (RunResult("ok", exit_code=0, stdout=b"y"), (4, 0, None, None)),
        (RunResult("ok", exit_code=0, stdout=b"x", cpu_time=1.2), (5, 0, None, "Time limit exceeded")),
        (RunResult("time_limit", signal=9, cpu_time=1.5), (5, 0, 9, "Time limit exceeded")),
        (RunResult("time_limit", signal=9, message="wall time limit"), (5, 0, 9, "Time limit exceeded (wall clock)")),
        (RunResult("signaled", signal=11), (7, 0, 11, "Caught fatal signal 11")),
        (RunResult("signaled", signal=25), (8, 0, 25, "Caught fatal signal 25")),
        (RunResult("signaled", signal=8), (9, 0, 8, "Caught fatal signal 8")),
        (RunResult("signaled", signal=6), (10, 0, 6, "Caught fatal signal 6")),
        (RunResult("signaled", signal=15), (12, 0, 15, "Caught fatal signal 15")),
        (RunResult("nonzero_exit", exit_code=2), (11, 2, None, "Exited with error status 2")),
        (RunResult("memory_limit", signal=9), (12, 0, 9, "Memory limit exceeded")),
        (RunResult("memory_limit", exit_code=1), (11, 1, None, "Memory limit exceeded")),
        (RunResult("output_limit", signal=9, stdout_truncated=True), (8, 0, 25, "Output limit exceeded")),
        (RunResult("output_limit"), (8, 0, 25, "Output limit exceeded")),
        (RunResult("bad_syscall", signal=31), (12, 0, 31, "Caught fatal signal 31 (a forbidden system call)")),
        (RunResult("internal_error", message="the box failed"), (13, None, None, "the box failed")),
        (
            RunResult("nonzero_exit", exit_code=127, message="cannot execute './main': Exec format error"),
            (14, 127, None, "cannot execute './main': Exec format error"),
        ),
    ]
    for r, want in cases:
        assert j0mod.judge_run(r, req) == want, r


@pytest.mark.parametrize(
    ("stdout", "expected", "status"),
    [
        (b"3\n", b"3", 3),
        (b"3", b"3\n\n", 3),
        (b"a \t\nb\0\n", b"a\nb", 3),
        (b"3\r\n", b"3", 3),
        (b" 3\n", b"3", 4),
        (b"a\n\nb\n", b"a\nb", 4),
        (b"", b"", 4),  # an empty stdout is nil to Judge0, and nil is not ""
        (b"\xff \n", b"\xff", 4),  # not UTF-8: compared as it is (Ruby's split raises)
        (b"\xff", b"\xff", 3),
    ],
)
def test_comparison_rule(stdout: bytes, expected: bytes, status: int) -> None:
    r = RunResult("ok", exit_code=0, stdout=stdout)
    assert j0mod.judge_run(r, request(expected_output=expected))[0] == status


def test_no_expected_output_is_accepted_and_no_cpu_limit_is_no_tle() -> None:
    r = RunResult("ok", exit_code=0, stdout=b"anything", cpu_time=99.0)
    assert j0mod.judge_run(r, request(cpu_time_limit=0.0)) == (3, 0, None, None)
    assert j0mod.judge_run(r, request())[0] == 5


def test_outcome_while_pending_and_of_jobs_without_a_result() -> None:
    req = request()
    assert outcome(req, JobInfo("t", "submission", "queued")).status_id == 1
    running = outcome(req, JobInfo("t", "submission", "running"))
    assert running.status_id == 2 and running.pending and running.stdout is None
    cancelled = outcome(req, JobInfo("t", "submission", "cancelled", error=Error("cancelled", "cancelled")))
    assert (cancelled.status_id, cancelled.message, cancelled.pending) == (13, "cancelled", False)
    assert outcome(req, JobInfo("t", "submission", "lost")).message == "lost"


def test_outcome_of_failed_compiles() -> None:
    req = request(lang="c", language_id=50)
    ce = outcome(req, done(compile=RunResult("nonzero_exit", exit_code=1, stdout=b"a", stderr=b"b")))
    assert (ce.status_id, ce.compile_output, ce.time, ce.memory, ce.exit_code) == (6, b"ab", None, None, None)
    slow = outcome(req, done(compile=RunResult("time_limit", stderr=b"partial")))
    assert (slow.status_id, slow.compile_output) == (6, b"Compilation time limit exceeded.")
    ie = outcome(req, done(compile=RunResult("internal_error", message="the box failed")))
    assert (ie.status_id, ie.message) == (13, "the box failed")
    assert outcome(req, done(message="no compile at all")).message == "no compile at all"


def test_outcome_of_options_bash_cannot_parse() -> None:
    o = outcome(request(compiler_options="-D'X"), done(RunResult("ok", exit_code=0)))
    assert o.status_id == 6 and o.compile_output == b"compile.sh: compiler_options: No closing quotation\n"
    o = outcome(request(command_line_arguments='"a'), done(RunResult("ok", exit_code=0)))
    assert (o.status_id, o.exit_code, o.message) == (11, 2, "Exited with error status 2")
    assert o.stderr == b"run.sh: command_line_arguments: No closing quotation\n"


def test_outcome_averages_runs_and_shows_the_last() -> None:
    runs = [
        RunResult("ok", exit_code=0, cpu_time=0.1, wall_time=0.3, memory=1000 * 1024),
        RunResult("ok", exit_code=0, cpu_time=0.2, wall_time=0.4, memory=2001 * 1024, stdout=b"2\n", stderr=b"e"),
    ]
    o = outcome(request(number_of_runs=2), done(*runs))
    assert o.status_id == 3 and o.stdout == b"2\n" and o.stderr == b"e" and o.wall_time == 0.4
    assert o.time == pytest.approx(0.15) and o.memory == 1500  # KB, an integer column
    o = outcome(request(redirect_stderr_to_stdout=True), done(runs[1]))
    assert o.stderr is None and o.stdout == b"2\n"
