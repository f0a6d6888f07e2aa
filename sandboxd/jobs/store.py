"""The daemon's durable job store: every accepted job and its result, in SQLite.

Why SQLite (the standard library's sqlite3): it is embedded (no server to run,
nothing to install), one file per instance, transactional, and its unique
index makes "an idempotency key names one job" atomic with the insert of the
job itself.  WAL mode lets the writer commit without rewriting the database
and keeps a reader's view consistent while a batch commits.

Durability, decided against the failure the store exists for (the daemon
killed: kill -9, the OOM killer, a crash): WAL with synchronous=NORMAL.  A
WAL commit is write(2)s of the transaction's frames; NORMAL fsyncs only at
checkpoints.  Written pages belong to the kernel, so a committed transaction
survives the death of the process; it is a power loss or kernel crash that
may roll back the last transactions before it (the database stays
consistent).  FULL (an fsync per commit, here per batch) would cover that
too at the price of a disk flush on every acknowledgement; a host that loses
power loses its running boxes anyway, and a fleet keeps its jobs in Redis.

Group commit: every write is queued on the event loop and a single writer
task hands everything queued within one loop iteration to one transaction
(a result, which nobody awaits, may wait LATER seconds for company, and
commits as a box starts a run once it has waited half of that: flush_due).  An
acknowledgement awaits the future of its insert, which resolves when its
batch has committed.  The transaction itself runs on the loop's thread: with
NORMAL a commit touches no disk (write(2)s into the page cache, tens of
microseconds for a batch), while a hop to a worker thread and back, GIL
hand-over included, measured more than the SQLite work (benchmarks/durable.py:
daemon CPU per job).  What waits for the disk, the checkpoint and its fsyncs,
runs in a thread of its own on its own connection (PASSIVE: it never blocks
the writer), so the loop never waits for the disk.  Reads use a connection
of their own: they see every committed row, and none of a batch in flight.

Large rows are written off the loop: a batch carrying at least
INLINE_BYTES of specs and results (a 48 MiB stdin is ~12,000 WAL pages, a
quarter of a second of write(2)s) runs on the writer thread instead
(sqlite3 releases the GIL while SQLite works).  Specs and results live in
tables of their own: a job's row is updated when it finishes and when it
expires, and SQLite rewrites a whole row on update, spec included; and a
blob that is its row's last column is written and read in place, a chunk at
a time (sandboxd.jobs.blobs: a 64 MiB result costs its size once, not three
times).

Rows: a job is inserted at acceptance (state "accepted", its spec: the
request's msgpack, in `specs`), updated once when final (state, finished_at;
the JobInfo's msgpack into `results`), turned into a small tombstone (state
"expired", spec and result dropped, the key freed) `results_ttl` after it
finished, so a lookup can still tell "expired" from "never issued", and
deleted another `results_ttl` later.  A waited job acknowledged only by its
result (sandboxd.jobs.accept) is inserted once, final (`record`: no spec,
nothing runs it again), batched as results are.

Bounded in bytes (`max_bytes`, config [jobs] store_max_bytes): the specs and
results the store holds (`size` per row).  A result that takes the store
past it evicts the oldest finished results first (tombstones in state
"evicted", counted); a new job that would not fit even with every finished
result gone (the unfinished ones fill it) is refused (StoreFull, with a
Retry-After from the rate at which jobs finish).  An accepted job is never
dropped: its result is written even past the limit, and evicts others.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from sandboxd.jobs import blobs
from sandboxd.jobs.keyfilter import StoreKeys
from sandboxd.jobs.storerows import (
    ACCEPTED,
    BY_KEY,
    DELETE_DUE,
    EVICTED,
    EXPIRE_DUE,
    EXPIRED,
    FINAL,
    GET,
    INDEXES,
    LIVE,
    OPEN,
    SCHEMA,
    SWEEP_CHUNK,
    JobIdInUse,
    NewJob,
    Split,
    Stored,
    StoreFull,
    Usage,
    default_max_bytes,
    default_path,
    evict_oldest,
    migrate,
    put_result,
    restart_unfinished,
    stored,
    tombstones,
    whole,
)

# (The rows' names are sandboxd.jobs.storerows'; the store's users import them from here.)
__all__ = ["EVICTED", "EXPIRED", "JobIdInUse", "JobStore", "NewJob", "Split", "StoreFull", "Stored", "default_path"]
log = logging.getLogger(__name__)
T = TypeVar("T")
Done = Callable[[bool, Any], None]  # after a batch: (ok, the operation's result or exception)
Op = tuple[Callable[[sqlite3.Connection], Any], Done | None, int]  # (statements, then, bytes it writes)

LATER = 0.01  # seconds a result may wait to join a batch (a crash meanwhile: the job runs again)
CHECKPOINT_EVERY = 1.0  # seconds
# A batch writing this many bytes of specs and results commits on the writer
# thread: below it, the thread hop costs more than the write (benchmarks/durable.py).
INLINE_BYTES = 1 << 20
WAL_LIMIT = 64 << 20  # the WAL file is truncated back to this after a checkpoint (journal_size_limit)


class JobStore:
    def __init__(self, path: str | Path, results_ttl: float, max_bytes: int = 0) -> None:
        """path: a file, or ":memory:" (nothing survives the process: for code
        that embeds a Service without a state directory).  max_bytes: 0 is
        default_max_bytes."""
        self.path = str(path)
        self.ttl = results_ttl
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        # isolation_level=None: transactions are ours (BEGIN/COMMIT around a batch).
        self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        if self.path != ":memory:":
            os.chmod(self.path, 0o600)  # specs hold users' sources and inputs
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute("PRAGMA wal_autocheckpoint=0")  # checkpoints (the fsyncs) are the thread's
        self.db.execute(f"PRAGMA journal_size_limit={WAL_LIMIT}")
        self.db.executescript(SCHEMA)
        migrate(self.db)
        self.db.executescript(INDEXES)
        self.usage = Usage(self.db, max_bytes or default_max_bytes(self.path))
        self.keys = StoreKeys(self.db)  # the keys its rows may hold: by_key's SELECT only for those
        self._pending: list[Op] = []
        self._scheduled = False  # a flush is due in the next loop iteration
        self._timer: asyncio.TimerHandle | None = None
        self._writing: asyncio.Future[list[tuple[bool, Any]]] | None = None  # a batch on the writer thread
        self._evicting = False
        # The checkpointer and the writer: each its own thread; the checkpointer
        # and the loop's reads each their own connection (in memory: one database, inline).
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="jobstore")
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="jobstore-write")
        self._ckpt: sqlite3.Connection | None = None
        self.rdb = self.db
        if self.path != ":memory:":
            self._ckpt = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self.rdb = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._checkpointing: asyncio.Future[Any] | None = None
        self._since_checkpoint = 0.0  # time of the first commit not yet checkpointed (0: none)
        self.batches = 0  # committed transactions (the benchmark reports ops per batch)
        self.ops = 0
        self.threaded = 0  # batches committed on the writer thread

    # --- start-up (synchronous: before anything is served) -------------------

    def recover(self, lost_info: Callable[[Stored], bytes]) -> tuple[list[Stored], list[str]]:
        """The jobs a previous daemon accepted and did not finish, in acceptance
        order, counted as restarted once more; those it had already restarted
        once (so two daemons died with them) become final as lost instead:
        returns (to re-queue, lost ids).  A clean stop that kept a job
        (`release`) does not count."""
        again, lost = restart_unfinished(self.db, lost_info)
        self.usage = Usage(self.db, self.usage.limit)
        return again, lost

    # --- the writer ---------------------------------------------------------

    def _queue(self, fn: Callable[[sqlite3.Connection], T], cost: int = 0) -> asyncio.Future[T]:
        fut: asyncio.Future[T] = asyncio.get_running_loop().create_future()

        def done(ok: bool, val: Any) -> None:
            if not fut.done():
                fut.set_result(val) if ok else fut.set_exception(val)

        self._then(fn, done, cost=cost)
        return fut

    def _then(
        self, fn: Callable[[sqlite3.Connection], Any], done: Done | None, delay: float = 0.0, cost: int = 0
    ) -> None:
        """fn in the next batch, then done(ok, its result or exception).
        delay: what nobody waits for (a result, once its job has answered)
        may wait that long for company, so one transaction carries many.
        cost: the bytes it writes (a batch of INLINE_BYTES goes to the writer thread)."""
        self._pending.append((fn, done, cost))
        if self._scheduled:
            return
        if not delay:
            self._kick()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(delay, self._kick)

    def flush_due(self, within: float) -> None:
        """Commit now what waits for company if its timer is due within `within` s:
        called as a box starts a run (Engine.while_running).  At its timer, the batch
        (~230 µs for ten results) fell on whichever reply came in then; now it is
        usually off any (benchmarks/timeline.py)."""
        if self._timer is not None and self._timer.when() - asyncio.get_running_loop().time() <= within:
            self._kick()

    def _kick(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._scheduled and self._pending and self._writing is None:
            # The next loop iteration: what the rest of this one queues joins the batch.
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._scheduled = False
        if self._writing is not None:  # one transaction at a time: the thread's end kicks again
            return
        batch, self._pending = self._pending, []
        if not batch:
            return
        fns = [fn for fn, _, _ in batch]
        if self._ckpt is not None and sum(cost for _, _, cost in batch) >= INLINE_BYTES:
            fut = asyncio.get_running_loop().run_in_executor(self._writer, self._apply, fns)
            self._writing = fut
            self.threaded += 1
            fut.add_done_callback(lambda f: self._written(batch, f))
            return
        try:
            results = self._apply(fns)
        except Exception as e:  # the COMMIT failed (disk full, I/O error): nothing of the batch is in
            results = self._failed(batch, e)
        self._settle(batch, results)

    def _written(self, batch: list[Op], fut: asyncio.Future[list[tuple[bool, Any]]]) -> None:
        self._writing = None
        exc = fut.exception() if not fut.cancelled() else asyncio.CancelledError()
        self._settle(batch, self._failed(batch, exc) if exc is not None else fut.result())
        self._kick()

    @staticmethod
    def _failed(batch: list[Op], e: BaseException) -> list[tuple[bool, Any]]:
        log.error("job store: a batch of %d failed: %s", len(batch), e)
        return [(False, e)] * len(batch)

    def _settle(self, batch: list[Op], results: list[tuple[bool, Any]]) -> None:
        for (_, done, _), (ok, val) in zip(batch, results, strict=True):
            if done is not None:
                try:
                    done(ok, val)
                except Exception:
                    log.exception("job store: after a batch")
            elif not ok:
                log.error("job store: %s", val)
        self._checkpoint()
        self._evict()
        quiet = not self._pending and self._writing is None
        self.keys.rebuild(quiet, self._ckpt or self.db, None if self._ckpt is None else self._pool)

    def _apply(self, fns: list[Callable[[sqlite3.Connection], Any]]) -> list[tuple[bool, Any]]:
        """One transaction, on the loop's thread when small: with synchronous=NORMAL a WAL
        commit is a few write(2)s into the page cache, tens of microseconds,
        less than a hop to a thread and back (measured: the hop, GIL hand-over
        included, cost more than the SQLite work of the batch).  What does wait
        for the disk, the checkpoint's fsyncs, runs in a thread (_checkpoint);
        so does a batch of large rows (_flush)."""
        out: list[tuple[bool, Any]] = []
        self.db.execute("BEGIN IMMEDIATE")
        try:
            for fn in fns:
                try:
                    out.append((True, fn(self.db)))
                except Exception as e:  # this operation's statement is undone, the batch goes on
                    out.append((False, e))
            self.db.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                self.db.execute("ROLLBACK")
            raise
        self.batches += 1
        self.ops += len(fns)
        if not self._since_checkpoint:
            self._since_checkpoint = time.monotonic()
        return out

    def _checkpoint(self, force: bool = False) -> None:
        """Copy the WAL into the database (PASSIVE: never blocks the writer),
        in the thread, at most every CHECKPOINT_EVERY seconds of commits."""
        if self._ckpt is None or self._checkpointing is not None or not self._since_checkpoint:
            return
        if not force and time.monotonic() - self._since_checkpoint < CHECKPOINT_EVERY:
            return
        self._since_checkpoint = 0.0
        ckpt = self._ckpt
        fut = asyncio.get_running_loop().run_in_executor(
            self._pool, lambda: ckpt.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        )
        self._checkpointing = fut

        def done(f: asyncio.Future[Any]) -> None:
            self._checkpointing = None
            if not f.cancelled() and f.exception() is not None:
                log.error("job store: checkpoint failed: %s", f.exception())

        fut.add_done_callback(done)

    # --- bytes: max_bytes ----------------------------------------------------

    def check_room(self, n: int) -> None:
        """Before a job of n spec bytes is accepted: StoreFull if it cannot fit."""
        self.usage.check(n)

    def _evict(self) -> None:
        """Past max_bytes: the oldest finished results become tombstones (EVICTED)
        until it fits again; unfinished jobs are never evicted."""
        u = self.usage
        excess = u.used - u.limit
        if excess <= 0 or u.done <= 0 or self._evicting:
            return
        self._evicting = True

        def evict(db: sqlite3.Connection) -> tuple[int, int]:
            return evict_oldest(db, excess, SWEEP_CHUNK)

        def done(ok: bool, val: Any) -> None:
            self._evicting = False
            if ok:
                u.evicted += val[0]
                u.done -= val[1]
                log.warning("job store: %d results evicted (%d bytes) to stay within %d bytes", *val, u.limit)

        self._then(evict, done, cost=excess)  # (freeing a large row's pages: off the loop)

    # --- operations ---------------------------------------------------------

    def add(self, job: NewJob, done: Callable[[bool, Stored | Exception | None], None]) -> None:
        """Insert an accepted job; done(True, None) once committed, done(True,
        Stored) if `job.key` already names that job (nothing inserted),
        done(False, JobIdInUse) for an id taken by another job.  Its bytes
        count from now (check_room first)."""
        n = len(job.spec) + sum(len(p) for p in job.more)
        self.usage.open += n
        self.keys.note(job.key)

        def insert(db: sqlite3.Connection) -> Stored | None:
            try:
                cur = db.execute(
                    ACCEPTED, (job.id, job.kind, job.callback_url, job.key, job.fingerprint, OPEN, job.created_at, n)
                )
            except sqlite3.IntegrityError:
                if job.key is not None:
                    held = stored(db, db.execute(BY_KEY, (job.key,)).fetchone())
                    if held is not None:
                        return held
                raise JobIdInUse(job.id) from None
            blobs.insert(db, "specs", "seq", "spec", cur.lastrowid, job.spec, job.more)  # (no copies of a large spec)
            return None

        def then(ok: bool, val: Any) -> None:
            if not ok or val is not None:  # nothing inserted
                self.usage.open -= n
            done(ok, val)

        self._then(insert, then, cost=n)

    def finish(
        self, job_id: str, state: str, info: bytes | Split, finished_at: float, done: Done | None = None
    ) -> None:
        """The final JobInfo of an unfinished job saved (`info`: msgpack, or a
        large one split, sandboxd.jobs.resultblob): done(True, (its row's
        size,)), or done(True, None) if it was not unfinished."""
        params = (state, finished_at, len(info), job_id)
        sql = "UPDATE jobs SET state=?, finished_at=?, size=size+? WHERE id=? AND finished_at IS NULL"
        sql += " RETURNING seq, size"

        def write(db: sqlite3.Connection) -> tuple[int] | None:
            row = db.execute(sql, params).fetchone()
            if row is not None:
                put_result(db, row[0], info)  # (its own table: a large one in place, no copies)
            return None if row is None else (row[1],)

        def then(ok: bool, val: Any) -> None:
            if ok and val is not None:
                spec = val[0] - len(info)
                self.usage.open -= spec
                self.usage.done += val[0]
                self.usage.finishing.note(spec)
            if done is not None:
                done(ok, val)

        self._then(whole(write), then, LATER, len(info))

    def record(
        self, job: NewJob, state: str, info: bytes | Split, finished_at: float, done: Done | None = None
    ) -> None:
        """A waited job's one row, final when written (sandboxd.jobs.accept: it
        was not in the store while it ran), batched as finish() is: its result,
        its key and fingerprint (a keyed retry finds it after it has left
        memory), no spec (nothing runs it again; job.spec is not written).
        done(False, IntegrityError) if its id or key is taken."""
        n = len(info)
        j = job
        self.keys.note(j.key)
        row = (j.id, j.kind, j.callback_url, j.key, j.fingerprint, state, j.created_at, finished_at, n)

        def write(db: sqlite3.Connection) -> int:
            seq = db.execute(FINAL, row).lastrowid
            assert seq is not None
            put_result(db, seq, info)
            return 1

        def then(ok: bool, val: Any) -> None:
            if ok:
                self.usage.done += n
            if done is not None:
                done(ok, val)

        self._then(whole(write), then, LATER, n)

    def release(self, job_id: str) -> None:
        """Left unfinished by a clean stop: runs again at the next start, and
        the stop does not count against it as a crash would."""
        self._then(lambda db: db.execute("UPDATE jobs SET restarts=-1 WHERE id=?", (job_id,)), None, LATER)

    async def get(self, job_id: str) -> Stored | None:
        # (The readers' connection: it sees only committed rows, and never waits for a batch.)
        return self._read(GET, job_id)

    def by_key(self, key: str) -> Stored | None:
        """The job an idempotency key names, if committed and not yet expired.
        Synchronous (one indexed SELECT): a keyed retry finds its job before
        admission, so a full queue never refuses it.  On the writer's own
        connection between batches (it sees exactly the committed rows then):
        the readers' re-reads its pages after every commit, ~10 µs more per
        lookup, and a waited keyed job makes one per run (sandboxd.jobs.accept).
        A key the filter has never seen is in no row: no SELECT (issue 18)."""
        if not self.keys.may_hold(key):
            return None
        if self._writing is None:
            # (no BEGIN/COMMIT: nothing else writes meanwhile, so row and result agree: issue 18)
            return stored(self.db, self.db.execute(BY_KEY, (key,)).fetchone())
        return self._read(BY_KEY, key)

    def _read(self, sql: str, param: str) -> Stored | None:
        """A row and its result in one read transaction: the writer thread may
        make it a tombstone between the two statements otherwise."""
        db = self.rdb
        db.execute("BEGIN")
        try:
            return stored(db, db.execute(sql, (param,)).fetchone())
        finally:
            db.execute("COMMIT")

    async def forget(self, job_id: str) -> bool:
        """A finished job's record dropped now (Judge0's DELETE): a tombstone."""
        n, freed = await self._queue(
            lambda db: tombstones(db, EXPIRED, f"id=? AND finished_at IS NOT NULL AND {LIVE}", (job_id,))
        )
        self.usage.done -= freed
        return bool(n)

    async def sweep(self, now: float | None = None) -> int:
        """Expire results older than results_ttl, delete tombstones older than
        twice that; in chunks, so that inserts never wait behind a long sweep
        (and on the writer thread: nobody waits for a sweep)."""
        now = time.time() if now is None else now
        done = 0
        # (every row finished 2 x results_ttl ago is a tombstone once the first query is done)
        for sql, cutoff in ((EXPIRE_DUE, now - self.ttl), (DELETE_DUE, now - 2 * self.ttl)):

            def chunk(db: sqlite3.Connection, sql: str = sql, cutoff: float = cutoff) -> tuple[int, int]:
                if sql is EXPIRE_DUE:
                    return tombstones(db, EXPIRED, sql, (cutoff,))
                return db.execute(sql, (cutoff,)).rowcount, 0

            while True:
                n, freed = await self._queue(chunk, INLINE_BYTES)
                self.usage.done -= freed
                done += n
                if n < SWEEP_CHUNK:
                    break
        return done

    async def count(self) -> dict[str, int]:
        """Rows by state (a full scan: for tests and benchmarks, not for a hot path)."""
        rows = await self._queue(lambda db: db.execute("SELECT state, count(*) FROM jobs GROUP BY state").fetchall())
        return {state: n for state, n in rows}

    async def close(self) -> None:
        self.keys.closing = True  # (no key-filter scan begins now: nobody would use it)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        while True:
            while self._writing is not None:
                await asyncio.wait([self._writing])
            self._flush()
            if self._writing is None and not self._pending:
                break
        if self._checkpointing is not None:
            await self._checkpointing
        if self.keys.scan is not None:  # (on the pool's thread: awaited, not waited for in shutdown)
            await asyncio.wait([self.keys.scan])
        self._pool.shutdown(wait=True)
        self._writer.shutdown(wait=True)
        if self._ckpt is not None:
            self._ckpt.close()
            self.rdb.close()
        self.db.close()  # (the last connection to close checkpoints and removes the WAL)
