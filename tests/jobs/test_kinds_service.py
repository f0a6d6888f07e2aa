"""A plug-in job kind on a real Service and engine: the core runs whatever kind is
registered (sandboxd.jobs.kinds), as it runs Judge0's and Piston's, without naming it."""

from __future__ import annotations

import asyncio

import msgspec
from box_fixtures import SyncEngine

from sandboxd.jobs.kinds import Context, JobKind, Result, register
from sandboxd.jobs.service import Service
from sandboxd.jobs.table import Job
from sandboxd.schema import JobInfo, RunRequest


class Echo(msgspec.Struct, tag="test-echo", tag_field="api"):
    lang: str
    text: str
    notify: bool = False


class EchoKind(JobKind[Echo]):
    name, op, fleet, public, spec_type = "test-echo", "test-echo", "test-echo", "submission", Echo
    compat = True

    def __init__(self) -> None:
        self.finished_calls: list[tuple[str, str, str]] = []

    async def execute(self, ctx: Context, job: Job, spec: Echo) -> Result:
        job.state = "running"
        return await ctx.engine.run(RunRequest(cmd=["echo", spec.text]))

    def notifies(self, spec: Echo) -> bool:
        return spec.notify

    async def finished(self, job_id: str, spec: Echo, info: JobInfo, allow_private: bool) -> None:
        self.finished_calls.append((job_id, spec.text, info.state))


ECHO = EchoKind()
register(ECHO)


def test_a_registered_kind_runs_keeps_its_spec_and_notifies(engine: SyncEngine) -> None:
    lang = sorted(engine.engine.languages)[0]

    async def scenario() -> None:
        svc = Service(engine.engine)
        try:
            # Through the transports' path: durable, its stored op the kind's.
            info = await svc.start_compat(Echo(lang, "hello", notify=True), "job-echo-1")
            assert svc.compat_pending == 1
            info = await asyncio.wait_for(svc.wait_job(info.job), 30)
            assert info.state == "done" and info.kind == "submission", info
            assert info.result is not None and info.result.stdout == b"hello\n"  # type: ignore[union-attr]
            assert svc.compat_pending == 0
            for _ in range(200):  # the callback runs in the background once the result is readable
                if ECHO.finished_calls:
                    break
                await asyncio.sleep(0.01)
            assert ECHO.finished_calls == [("job-echo-1", "hello", "done")]
            row = await svc.store.get("job-echo-1")
            assert row is not None and row.kind == "test-echo"
            svc.table.hot.clear()  # (read it back from the store, decoded by its kind)
            found = await svc.compat_job("job-echo-1")
            assert found is not None and found[0] == Echo(lang, "hello", notify=True)

            # A fleet host's path (submit_spec, notify=False: the coordinator notifies).
            job = svc.submit_spec(Echo(lang, "again", notify=True), notify=False)
            assert (await asyncio.wait_for(svc.wait(job), 30)).state == "done"
            await asyncio.sleep(0.05)
            assert len(ECHO.finished_calls) == 1
        finally:
            await svc.close()

    engine.call(scenario())
