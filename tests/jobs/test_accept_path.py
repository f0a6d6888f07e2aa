"""A durable job's acceptance (sandboxd.jobs.accept) on a real Service, engine
and SQLite file: the per-run path asks the store nothing before its insert (a
keyed retry is found by the insert itself, or on the refusal path), and a big
spec is encoded and hashed off the event loop, into the same bytes and
fingerprint as inline."""

from __future__ import annotations

import asyncio
from pathlib import Path

import msgspec
import pytest
from box_fixtures import SyncEngine

from sandboxd.errors import ServiceError
from sandboxd.jobs.accept import encode, encoded
from sandboxd.jobs.fingerprint import fingerprint
from sandboxd.jobs.kinds import KINDS
from sandboxd.jobs.service import Service
from sandboxd.jobs.store import INLINE_BYTES, JobStore
from sandboxd.schema import RunRequest


async def saved(svc: Service, job_id: str) -> None:
    """Until its result is in the store and the job out of memory's unfinished table."""
    for _ in range(200):
        if job_id not in svc.jobs:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"job {job_id} never left memory")


def test_a_keyed_job_asks_the_store_nothing_before_its_insert(engine: SyncEngine, tmp_path: Path) -> None:
    """On c50a363 every keyed request ran a SELECT by idem_key on the readers'
    connection before admission (~0.1 ms of the socket round trip's daemon CPU)."""

    async def scenario() -> None:
        svc = Service(engine.engine, store=JobStore(tmp_path / "j.sqlite3", 600))
        reads: list[str] = []
        svc.store.rdb.set_trace_callback(reads.append)
        svc.store.db.set_trace_callback(reads.append)  # (by_key reads on the writer's between batches)
        try:
            first = await svc.start_run(RunRequest(cmd=["true"]), idempotency_key="k-1")
            assert (await svc.wait_job(first.job)).state == "done"
            assert not [q for q in reads if "idem_key" in q and q.lstrip().upper().startswith("SELECT")], reads
            await saved(svc, first.job)
            # A retry once the job is out of memory: the INSERT meets the key, and
            # the retry gets the job, holding nothing of its own.
            again = await svc.start_run(RunRequest(cmd=["true"]), idempotency_key="k-1")
            assert again.job == first.job and again.state == "done", again
            assert not svc.jobs and all(q.promised == 0 and q.depth == 0 for q in engine.engine.queues.values())
            with pytest.raises(ServiceError) as e:
                await svc.start_run(RunRequest(cmd=["false"]), idempotency_key="k-1")
            assert e.value.err.code == "conflict" and first.job in e.value.err.message
        finally:
            await svc.close()

    engine.call(scenario())


def test_a_keyed_retry_is_answered_when_the_store_is_full(engine: SyncEngine, tmp_path: Path) -> None:
    """The refusal path looks the key up: a full store never refuses a retry of a job it holds."""

    async def scenario() -> None:
        svc = Service(engine.engine, store=JobStore(tmp_path / "j.sqlite3", 600, max_bytes=64 << 10))
        try:
            done = await svc.start_run(RunRequest(cmd=["true"]), idempotency_key="done-1")
            assert (await svc.wait_job(done.job)).state == "done"
            await saved(svc, done.job)
            slow = await svc.start_run(RunRequest(cmd=["sleep", "30"], stdin=b"x" * (60 << 10)))
            with pytest.raises(ServiceError) as e:  # the store is full...
                await svc.start_run(RunRequest(cmd=["true"], stdin=b"y" * (8 << 10)), idempotency_key="new")
            assert e.value.err.code == "queue_full", e.value.err
            again = await svc.start_run(RunRequest(cmd=["true"]), idempotency_key="done-1")  # ...not for a retry
            assert again.job == done.job and again.state == "done", again
            await svc.cancel_job(slow.job)
        finally:
            await svc.close()

    engine.call(scenario())


def test_a_big_spec_is_encoded_in_a_thread_into_the_inline_bytes() -> None:
    """On c50a363 a 40 MiB spec was encoded (twice: fingerprint and store) on the loop."""
    big = RunRequest(cmd=["wc", "-c"], stdin=b"z" * (2 * INLINE_BYTES), cwd="/box")

    async def scenario() -> tuple[list[str], object]:
        order: list[str] = []

        async def encoding() -> object:
            enc = await encode("run", big, "http://cb.example/x", True, 3 * INLINE_BYTES)
            order.append("encoded")
            return enc

        async def other() -> None:
            order.append("loop ran")

        got = await asyncio.gather(encoding(), other())
        return order, got[0]

    order, enc = asyncio.run(scenario())
    assert order == ["loop ran", "encoded"]  # the loop went on while it was encoded
    inline = encoded("run", big, "http://cb.example/x", True)
    data = b"".join(enc.pieces)  # (as the store writes them: sandboxd.jobs.specpieces)
    assert isinstance(enc, type(inline)) and data == b"".join(inline.pieces)
    assert enc.fingerprint == inline.fingerprint == fingerprint("run", big, "http://cb.example/x")
    assert KINDS.decode("run", data)[1] == big  # (what a restart reads back)
    unkeyed = encoded("run", big, None, False)
    assert unkeyed.fingerprint is None and msgspec.msgpack.decode(b"".join(unkeyed.pieces), type=RunRequest) == big


def test_a_big_keyed_job_runs_replays_and_conflicts(engine: SyncEngine, tmp_path: Path) -> None:
    async def scenario() -> None:
        svc = Service(engine.engine, store=JobStore(tmp_path / "j.sqlite3", 600))
        data = b"q" * (INLINE_BYTES + 12345)
        try:
            req = RunRequest(cmd=["wc", "-c"], stdin=data)
            first = await svc.start_run(req, idempotency_key="big")
            info = await svc.wait_job(first.job)
            assert info.state == "done" and info.result is not None
            assert info.result.stdout.strip() == str(len(data)).encode(), info.result
            again = await svc.start_run(RunRequest(cmd=["wc", "-c"], stdin=data), idempotency_key="big")
            assert again.job == first.job
            await saved(svc, first.job)
            again = await svc.start_run(RunRequest(cmd=["wc", "-c"], stdin=data), idempotency_key="big")
            assert again.job == first.job and again.state == "done"
            with pytest.raises(ServiceError) as e:
                await svc.start_run(RunRequest(cmd=["wc", "-c"], stdin=data + b"!"), idempotency_key="big")
            assert e.value.err.code == "conflict"
        finally:
            await svc.close()

    engine.call(scenario())
