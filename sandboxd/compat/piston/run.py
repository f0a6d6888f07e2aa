"""Running an execute request on a host: the only module of the Piston API that touches the engine."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from sandboxd.compat import Compiler, run_program
from sandboxd.compat.piston.request import Job
from sandboxd.judging.judge import STATUS_VERDICT, compile_failed, test_result
from sandboxd.schema import RunResult, SubmissionResult, Verdict

if TYPE_CHECKING:  # only a host runs jobs: the API's other modules load without the engine
    from sandboxd.engine.engine import Engine


async def run_job(
    engine: Engine, compiler: Compiler, job: Job, on_run: Callable[[Verdict, RunResult], None]
) -> SubmissionResult:
    comp = await compiler.compile(job.lang, job.entry.content, job.others, [], job.compile_limits)
    c = comp.result
    if not comp.ok:
        assert c is not None
        return compile_failed(c)
    r = await run_program(engine, comp, job.entry, job.others, job.stdin, job.run_limits, job.args)
    verdict = STATUS_VERDICT[r.status]
    on_run(verdict, r)
    return SubmissionResult(
        verdict, compile=c, tests=[test_result(0, verdict, r)], time=r.cpu_time, memory=r.memory, runs=[r]
    )
