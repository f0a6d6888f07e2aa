"""Job life-cycle edges of a real Service on the session's real engine: a job
cancelled before its task's first step still finishes (its waiters wake, it
leaves memory, its key and its admission are freed, its durable row is final);
keyed replays do not pile progress listeners onto their job."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from box_fixtures import SyncEngine

from sandboxd import schema
from sandboxd.jobs.service import Service
from sandboxd.jobs.table import LISTENERS
from sandboxd.schema import RunRequest, Submission


def test_a_job_cancelled_before_its_first_step_finishes(engine: SyncEngine) -> None:
    async def scenario() -> None:
        svc = Service(engine.engine)
        try:
            # The Service API (a fleet host's jobs): cancelled in the iteration that started it.
            job = svc.submit_run(RunRequest(cmd=["true"]))
            svc.cancel(job.id)
            info = await asyncio.wait_for(svc.wait(job), 10)
            assert info.state == "cancelled" and info.error is not None and info.error.code == "cancelled"
            assert job.id not in svc.jobs

            # A transport's keyed job, cancelled the moment the store has it (its task just created).
            start = asyncio.ensure_future(svc.start_run(RunRequest(cmd=["true"]), idempotency_key="k1"))
            while "k1" not in svc.table.keys:
                await asyncio.sleep(0)
            held = svc.table.keys["k1"]
            assert held.accepted is not None and held.task is None
            held.accepted.add_done_callback(lambda _: held.task.cancel() if held.task else None)
            acked = await start
            info = await asyncio.wait_for(svc.wait_job(acked.job), 10)
            assert info.state == "cancelled", info
            for _ in range(100):  # its result saved (a batch, LATER s), then out of memory
                if acked.job not in svc.jobs:
                    break
                await asyncio.sleep(0.02)
            assert acked.job not in svc.jobs and "k1" not in svc.table.keys
            row = await svc.store.get(acked.job)
            assert row is not None and row.state == "cancelled"
            # Nothing of either job holds a queue place: the engine takes and runs another.
            res = await asyncio.wait_for(svc.wait(svc.submit_run(RunRequest(cmd=["true"]))), 30)
            assert res.state == "done", res
        finally:
            await svc.close()

    engine.call(scenario())


def test_keyed_replays_keep_a_bounded_number_of_progress_listeners(engine: SyncEngine) -> None:
    async def scenario() -> None:
        svc = Service(engine.engine)
        heard: list[int] = []
        try:
            sub = Submission(lang="bash", source=b"sleep 1; echo hi", tests=[schema.TestCase(b"", b"hi")])

            def listener(i: int) -> Callable[[schema.TestResult], None]:
                return lambda t: heard.append(i)

            first = await svc.start_submission(sub, listener(0), idempotency_key="replayed")
            for i in range(1, 5 * LISTENERS):  # a client retrying while its job runs
                again = await svc.start_submission(sub, listener(i), idempotency_key="replayed")
                assert again.job == first.job
            job = svc.jobs[first.job]
            assert len(job.listeners) == LISTENERS
            info = await asyncio.wait_for(svc.wait_job(first.job), 60)
            assert info.state == "done", info
            # The newest replays (the live ones) heard the test's result.
            assert sorted(heard) == list(range(4 * LISTENERS, 5 * LISTENERS)), heard
        finally:
            await svc.close()

    engine.call(scenario())
