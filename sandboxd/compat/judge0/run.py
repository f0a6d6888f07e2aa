"""Running a submission on a host: the only module of the Judge0 API that touches the engine."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from sandboxd.compat import Compiler, run_program
from sandboxd.compat.judge0.casts import words
from sandboxd.compat.judge0.request import Request
from sandboxd.compat.judge0.status import judge_run
from sandboxd.compat.judge0.tables import J0_VERDICT
from sandboxd.judging.judge import STATUS_VERDICT, compile_failed, test_result
from sandboxd.schema import FileIn, RunResult, SubmissionResult, TestResult, Verdict

if TYPE_CHECKING:  # only a host runs jobs: the API's other modules load without the engine
    from sandboxd.engine.engine import Engine


async def run_job(
    engine: Engine, compiler: Compiler, req: Request, on_run: Callable[[Verdict, RunResult], None]
) -> SubmissionResult:
    """Compile once, then up to `number_of_runs` runs, stopping at the first that is
    not Accepted (as Judge0's worker does).  `outcome` renders the result."""
    try:
        options = words(req.compiler_options)
    except ValueError as e:  # bash: a syntax error in compile.sh, i.e. a compilation error
        return SubmissionResult("CE", message=str(e))
    try:
        args = words(req.command_line_arguments)
    except ValueError as e:  # bash: a syntax error in run.sh, exit status 2
        return SubmissionResult("RE", message=str(e))
    comp = await compiler.compile(req.lang, req.source_code, req.extras, options)
    c = comp.result
    if not comp.ok:
        assert c is not None
        return compile_failed(c)
    limits = req.limits()
    source = FileIn(comp.lang.source, req.source_code)
    runs: list[RunResult] = []
    tests: list[TestResult] = []
    for i in range(req.number_of_runs):
        r = await run_program(
            engine, comp, source, req.extras, req.stdin or b"", limits, args, req.redirect_stderr_to_stdout
        )
        status, _, _, message = judge_run(r, req)
        verdict = J0_VERDICT.get(status) or STATUS_VERDICT[r.status]
        on_run(verdict, r)
        tests.append(test_result(i, verdict, r, message or ""))
        if runs:
            # Only the last run's output is shown (and every run's time and memory
            # averaged): twenty full outputs would be kept for nothing.
            runs[-1].stdout = runs[-1].stderr = b""
        runs.append(r)
        if status != 3:
            break
    return SubmissionResult(
        tests[-1].verdict,
        compile=c,
        tests=tests,
        time=max(t.time for t in tests),
        memory=max(t.memory for t in tests),
        runs=runs,
    )
