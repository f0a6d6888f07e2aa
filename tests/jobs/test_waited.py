"""A waited job (its client hears of it only by its result: `waited=True`,
what the transports pass for a waited call sent no job id first) on a real
Service, engine and SQLite file: not in the job store while it runs, one row
written at its end, and every edge an idempotency key, a lookup, a stop, a
full store or an acknowledging retry brings (sandboxd.jobs.accept)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from box_fixtures import SyncEngine
from test_accept_path import saved

from sandboxd.errors import ServiceError
from sandboxd.jobs import service as service_mod
from sandboxd.jobs import store as store_mod
from sandboxd.jobs.fingerprint import fingerprint
from sandboxd.jobs.service import STOPPED, Service
from sandboxd.jobs.store import JobStore
from sandboxd.jobs.table import lost_info
from sandboxd.schema import RunRequest

SLOW = RunRequest(cmd=["sh", "-c", "sleep 0.5; cat /proc/sys/kernel/random/uuid"])  # a new value per execution


def _svc(engine: SyncEngine, path: Path, **kw: int) -> tuple[Service, list[str]]:
    """A Service on a file store, and every statement its writer connection runs."""
    svc = Service(engine.engine, store=JobStore(path, 600, **kw))
    writes: list[str] = []
    svc.store.db.set_trace_callback(writes.append)
    return svc, writes


def _count(writes: list[str], head: str) -> int:
    return sum(1 for w in writes if w.lstrip().upper().startswith(head))


async def _running(svc: Service, job_id: str) -> None:
    for _ in range(500):
        if (await svc.job_info(job_id)).state == "running":
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"job {job_id} never ran")


def _idle(engine: SyncEngine) -> bool:
    return all(q.promised == 0 and q.depth == 0 for q in engine.engine.queues.values())


def test_a_waited_job_is_written_once_at_its_end(engine: SyncEngine, tmp_path: Path) -> None:
    """On lead2 every waited call was an INSERT (jobs + specs) committed before
    it started, then an UPDATE at its end."""

    async def scenario() -> None:
        svc, writes = _svc(engine, tmp_path / "j.sqlite3")
        try:
            acked = await svc.start_run(SLOW, idempotency_key="w-1", waited=True)
            # Running, in memory only: a lookup finds it there, the store has nothing of it.
            assert (await svc.job_info(acked.job)).state in ("queued", "running")
            assert await svc.store.get(acked.job) is None
            assert svc.store.usage.open == 0
            assert _count(writes, "INSERT") == 0, writes
            info = await svc.wait_job(acked.job)
            assert info.state == "done" and info.result is not None and info.result.status == "ok", info
            await saved(svc, acked.job)
            # One row, final when written: its result, key and fingerprint, no spec.
            assert _count(writes, "INSERT INTO JOBS") == 1 and _count(writes, "UPDATE") == 0, writes
            assert _count(writes, "INSERT INTO SPECS") == 0, writes
            row = await svc.store.get(acked.job)
            assert row is not None and row.state == "done" and row.key == "w-1" and row.spec is None
            assert row.fingerprint == fingerprint("run", SLOW, None)
            assert svc.store.db.execute("SELECT count(*) FROM specs").fetchone()[0] == 0
            size = svc.store.db.execute("SELECT size FROM jobs WHERE id=?", (acked.job,)).fetchone()[0]
            assert size == len(row.info or b"") > 0 and svc.store.usage.done == size and svc.store.usage.open == 0
            # Out of memory (the cache of recent results dropped too): read from the store.
            svc.table.hot.clear()
            assert await svc.job_info(acked.job) == info
            # A keyed retry, waited or not, gets that job: nothing runs again, no row is added.
            again = await svc.start_run(SLOW, idempotency_key="w-1", waited=True)
            assert again == info and _idle(engine) and not svc.jobs
            assert (await svc.start_run(SLOW, idempotency_key="w-1")).job == acked.job
            with pytest.raises(ServiceError) as e:
                await svc.start_run(RunRequest(cmd=["true"]), idempotency_key="w-1", waited=True)
            assert e.value.err.code == "conflict" and acked.job in e.value.err.message
            await asyncio.sleep(0.1)
            assert _idle(engine) and not svc.jobs
            assert (await svc.store.count()) == {"done": 1}
            # The key's first lookup was the filter's (a new key: no SELECT); the two
            # waited retries' went to the store, which holds it (sandboxd.jobs.keyfilter).
            metrics = (await svc.metrics_text()).decode()
            assert 'sandboxd_job_store_key_lookups_total{answer="filter"} 1.0' in metrics, metrics
            assert 'sandboxd_job_store_key_lookups_total{answer="store"} 2.0' in metrics, metrics
            assert "sandboxd_job_store_key_filter_rebuilds_total 0.0" in metrics
        finally:
            await svc.close()

    engine.call(scenario())


def test_a_waited_job_with_a_large_result_is_stored_split_and_read_back_whole(
    engine: SyncEngine, tmp_path: Path
) -> None:
    """The waited job's one row carries a split result (sandboxd.jobs.resultblob)
    like finish() does: in `results`, not in the unused jobs.info column, and a
    keyed retry after it left memory gets every byte back."""

    async def scenario() -> None:
        svc, writes = _svc(engine, tmp_path / "j.sqlite3")
        try:
            req = RunRequest(cmd=["head", "-c", str(512 << 10), "/dev/zero"])  # past resultblob.SPLIT_FROM
            acked = await svc.start_run(req, idempotency_key="w-big", waited=True)
            info = await svc.wait_job(acked.job)
            assert info.result is not None and len(info.result.stdout) == 512 << 10, info.state
            await saved(svc, acked.job)
            assert _count(writes, "INSERT INTO JOBS") == 1 and _count(writes, "UPDATE JOBS") == 0, writes
            db = svc.store.db
            assert db.execute("SELECT info FROM jobs WHERE id=?", (acked.job,)).fetchone()[0] is None
            (n,) = db.execute(
                "SELECT length(results.info) FROM results JOIN jobs USING (seq) WHERE id=?", (acked.job,)
            ).fetchone()
            assert n > 512 << 10
            svc.table.hot.clear()
            again = await svc.start_run(req, idempotency_key="w-big", waited=True)
            assert again == info and _idle(engine)
        finally:
            await svc.close()

    engine.call(scenario())


def test_a_keyed_retry_while_it_runs_is_that_job_and_an_acknowledging_one_stores_it(
    engine: SyncEngine, tmp_path: Path
) -> None:
    """A waited retry gets the job in memory; one answered with the job id (a
    202, an SSE or socket `accepted`) acknowledges it, so it is committed as
    an unfinished job before that answer, and its end updates that row."""

    async def scenario() -> None:
        svc, writes = _svc(engine, tmp_path / "j.sqlite3")
        try:
            first = await svc.start_run(SLOW, idempotency_key="w-2", waited=True)
            again = await svc.start_run(SLOW, idempotency_key="w-2", waited=True)
            assert again.job == first.job and await svc.store.get(first.job) is None
            assert len(svc.jobs) == 1
            acked = await svc.start_run(SLOW, idempotency_key="w-2")  # wait=false: a 202 with the id
            assert acked.job == first.job and acked.state in ("queued", "running"), acked
            row = await svc.store.get(first.job)  # committed before that answer: a restart runs it
            assert row is not None and row.state == "accepted"
            assert svc.store.db.execute("SELECT count(*) FROM specs").fetchone()[0] == 1  # (what recover reads)
            info = await svc.wait_job(first.job)
            assert info.state == "done", info
            await saved(svc, first.job)
            row = await svc.store.get(first.job)
            assert row is not None and row.state == "done"
            assert _count(writes, "INSERT INTO JOBS") == 1 and _count(writes, "UPDATE") == 1, writes
            assert svc.store.usage.open == 0
        finally:
            await svc.close()

    engine.call(scenario())


def test_an_acknowledging_retry_of_a_waited_job_that_just_ended_waits_for_its_row(
    engine: SyncEngine, tmp_path: Path
) -> None:
    """Ended, its row not yet written (a batch waits LATER s for company): the
    202 comes once the row is committed, never before."""

    async def scenario() -> None:
        svc, _ = _svc(engine, tmp_path / "j.sqlite3")
        try:
            req = RunRequest(cmd=["true"])
            first = await svc.start_run(req, idempotency_key="w-3", waited=True)
            assert (await svc.wait_job(first.job)).state == "done"
            assert first.job in svc.jobs and await svc.store.get(first.job) is None  # (its row is queued)
            acked = await svc.start_run(req, idempotency_key="w-3")
            assert acked.job == first.job and acked.state == "done"
            row = await svc.store.get(first.job)
            assert row is not None and row.state == "done"
        finally:
            await svc.close()

    engine.call(scenario())


def test_a_stop_keeps_nothing_of_a_waited_job(engine: SyncEngine, tmp_path: Path) -> None:
    """SIGTERM past drain_timeout: an acknowledged job is kept for the next
    start, a waited one is not (its waiter is told `draining`, and its
    client's keyed retry runs it on the next daemon)."""
    path = tmp_path / "j.sqlite3"
    long = RunRequest(cmd=["sleep", "30"])

    async def scenario() -> None:
        svc, _ = _svc(engine, path)
        try:
            waited = await svc.start_run(long, idempotency_key="w-4", waited=True)
            kept = await svc.start_run(long, idempotency_key="a-4")
            await _running(svc, waited.job)
            waiter = asyncio.ensure_future(svc.wait_job(waited.job))  # (its call waits for it, as dispatch does)
            await svc.drain(0.2)
            info = await waiter
            assert info.state == "cancelled" and info.error is not None, info
            assert info.error.code == "draining" and info.error.message == STOPPED, info.error
            told = await svc.wait_job(kept.job)
            assert told.error is not None and told.error.code == "draining" and told.error.message != STOPPED
            assert waited.job not in svc.jobs and "w-4" not in svc.table.keys
            with pytest.raises(ServiceError) as e:  # (gone: nothing of it is kept)
                await svc.job_info(waited.job)
            assert e.value.err.code == "not_found"
        finally:
            await svc.close()
        store = JobStore(path, 600)
        again, lost = store.recover(lost_info)
        assert [s.id for s in again] == [kept.job] and not lost  # (the waited job: no row at all)
        assert await store.get(waited.job) is None
        await store.close()

    engine.call(scenario())


def test_a_full_store_refuses_a_waited_job_by_its_request_and_it_holds_no_room_while_it_runs(
    engine: SyncEngine, tmp_path: Path
) -> None:
    """Decided: a waited job is checked against jobs.store_max_bytes as any job
    (its result will need room; results evict older results, never an
    unfinished job), by its request's size; while it runs it holds none."""

    async def scenario() -> None:
        svc, _ = _svc(engine, tmp_path / "j.sqlite3", max_bytes=64 << 10)
        try:
            slow = await svc.start_run(RunRequest(cmd=["sleep", "30"], stdin=b"x" * (60 << 10)))
            with pytest.raises(ServiceError) as e:
                await svc.start_run(RunRequest(cmd=["true"], stdin=b"y" * (8 << 10)), waited=True)
            assert e.value.err.code == "queue_full" and "store_max_bytes" in e.value.err.message, e.value.err
            open_before = svc.store.usage.open
            small = await svc.start_run(RunRequest(cmd=["sleep", "0.3"]), waited=True)  # it fits
            assert svc.store.usage.open == open_before
            assert (await svc.wait_job(small.job)).state == "done"
            await svc.cancel_job(slow.job)
        finally:
            await svc.close()

    engine.call(scenario())


def test_a_result_waiting_for_company_commits_while_the_next_run_is_in_its_box(
    engine: SyncEngine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its batch's timer (here a minute) is not what commits it: the next run's
    dispatch does, while that run's box is busy (Engine.while_running ->
    JobStore.flush_due: with the daemon's LATER, once the result has waited
    half of it), so the commit is usually off any reply (issue 18)."""
    monkeypatch.setattr(store_mod, "LATER", 60.0)  # the timer: a minute away
    monkeypatch.setattr(service_mod, "LATER", 240.0)  # the service's window, LATER / 2: 2 min, so due at once

    async def scenario() -> None:
        svc, _ = _svc(engine, tmp_path / "j.sqlite3")
        try:
            first = await svc.start_run(RunRequest(cmd=["true"]), idempotency_key="c-1", waited=True)
            assert (await svc.wait_job(first.job)).state == "done"
            svc.store.flush_due(1.0)  # (not due within a second: nothing is committed)
            await asyncio.sleep(0.2)
            assert await svc.store.get(first.job) is None  # (waiting for company: the timer is a minute away)
            second = await svc.start_run(SLOW, idempotency_key="c-2", waited=True)
            row = None
            for _ in range(500):  # (the dispatch may wait for a box being reset: seconds at most, not the minute)
                row = await svc.store.get(first.job)
                if row is not None:
                    break
                await asyncio.sleep(0.01)
            assert row is not None and row.state == "done"
            assert (await svc.job_info(second.job)).state in ("queued", "running")  # (committed before its end)
            assert (await svc.wait_job(second.job)).state == "done"
        finally:
            await svc.close()
        assert engine.engine.while_running is None  # (a closed service's store is not flushed by later runs)

    engine.call(scenario())
