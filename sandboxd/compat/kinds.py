"""Judge0 and Piston as job kinds of the core, and their registration.

A spec is the API's validated request (Judge0's submission, Piston's execute
request), tagged by `api`.  Both kinds store the name "compat" (in the job
store and as the fleet job kind in Redis): the name earlier versions wrote,
so during a rolling upgrade either version reads the other's jobs, the `api`
tag inside telling the two apart (sandboxd.jobs.kinds).  The work is the
API's own translation onto the engine (`run_job`), with the metrics every
job reports.

`register()` is the one call the app layer makes (a host daemon and a
coordinator alike): the two kinds with sandboxd.jobs.kinds, the two HTTP
apps with sandboxd.api.httpserver.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

from sandboxd.api import httpserver, openapi
from sandboxd.compat import judge0, piston
from sandboxd.compat import openapi as compat_openapi
from sandboxd.jobs import kinds
from sandboxd.jobs.kinds import Context, JobKind, Result
from sandboxd.schema import FileIn, JobInfo, RunResult, SubmissionResult, Verdict, check_box_path

if TYPE_CHECKING:
    from sandboxd.compat import Compiler
    from sandboxd.engine.engine import Engine
    from sandboxd.jobs.table import Job

S = TypeVar("S", judge0.Request, piston.Job)
RunJob = Callable[["Engine", "Compiler", S, Callable[[Verdict, RunResult], None]], Awaitable[SubmissionResult]]


class _CompatKind(JobKind[S]):
    op = fleet = "compat"
    public = "submission"
    compat = True

    def runs(self, spec: S) -> int:
        return 2  # a compile and a run

    def lang(self, spec: S) -> str:
        return spec.lang

    def _files(self, spec: S) -> list[FileIn]:
        raise NotImplementedError

    def check(self, spec: S) -> S:
        # (the spec came through the job store or Redis: its paths stay inside the box)
        for f in self._files(spec):
            check_box_path(f.path, "file")
        return spec

    def _run_job(self) -> RunJob[S]:
        raise NotImplementedError

    async def execute(self, ctx: Context, job: Job, spec: S) -> Result:
        def on_run(verdict: Verdict, r: RunResult) -> None:
            ctx.metrics.verdicts_of("test", verdict).inc()
            ctx.recent.append(r.wall_time)

        job.state = "running"
        res = await self._run_job()(ctx.engine, ctx.compiler, spec, on_run)
        ctx.metrics.verdicts_of("submission", res.verdict).inc()
        ctx.metrics.submission_seconds_of(spec.lang).observe(time.monotonic() - job.created)
        return res


class Judge0Kind(_CompatKind[judge0.Request]):
    name, spec_type = "judge0", judge0.Request

    def _files(self, spec: judge0.Request) -> list[FileIn]:
        return list(spec.extras)

    def _run_job(self) -> RunJob[judge0.Request]:
        return judge0.run_job

    def notifies(self, spec: judge0.Request) -> bool:
        return bool(spec.callback_url)

    async def finished(self, job_id: str, spec: judge0.Request, info: JobInfo, allow_private: bool) -> None:
        await judge0.deliver_callback(job_id, spec, info, allow_private)


class PistonKind(_CompatKind[piston.Job]):
    name, spec_type = "piston", piston.Job

    def _files(self, spec: piston.Job) -> list[FileIn]:
        return [spec.entry, *spec.others]

    def _run_job(self) -> RunJob[piston.Job]:
        return piston.run_job


JUDGE0 = Judge0Kind()
PISTON = PistonKind()


def register() -> None:
    """Judge0 and Piston into this process's core: their job kinds, their HTTP apps
    (mounted at `judge0_prefix` / `piston_prefix`, or served alone on `judge0_http` /
    `piston_http`).  Idempotent."""
    kinds.register(JUDGE0)
    kinds.register(PISTON)
    httpserver.mount("judge0", judge0.make_app, judge0.TOKEN_HEADERS, judge0.route_error)
    # (Piston's clients send their key as is in Authorization: a tenant's key is taken there too)
    httpserver.mount("piston", piston.make_app, ("Authorization",), piston.route_error)
    openapi.register("judge0", compat_openapi.JUDGE0)
    openapi.register("piston", compat_openapi.PISTON)
