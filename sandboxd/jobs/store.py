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
(a result, which nobody awaits, may wait LATER seconds for company).  An
acknowledgement awaits the future of its insert, which resolves when its
batch has committed.  The transaction itself runs on the loop's thread: with
NORMAL a commit touches no disk (write(2)s into the page cache, tens of
microseconds for a batch), while a hop to a worker thread and back, GIL
hand-over included, measured more than the SQLite work (benchmarks/durable.py:
daemon CPU per job).  What waits for the disk, the checkpoint and its fsyncs,
runs in a thread of its own on its own connection (PASSIVE: it never blocks
the writer), so the loop never waits for the disk.  Reads use the writer's
connection between batches: they see every committed row.

Rows: a job is inserted at acceptance (state "accepted", its spec: the
request's msgpack), updated once when final (state, the JobInfo's msgpack,
finished_at), turned into a small tombstone (state "expired", spec and
result dropped, the key freed) `results_ttl` after it finished, so a lookup
can still tell "expired" from "never issued", and deleted another
`results_ttl` later.
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")
Done = Callable[[bool, Any], None]  # after a batch: (ok, the operation's result or exception)

OPEN = "accepted"  # the state of a job not yet final
EXPIRED = "expired"
LATER = 0.01  # seconds a result may wait to join a batch (a crash meanwhile: the job runs again)
SWEEP_CHUNK = 500  # rows per sweep statement: the loop (and inserts) wait for one chunk, not for all
CHECKPOINT_EVERY = 1.0  # seconds

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY,      -- acceptance order: re-queued in it
    id TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,           -- run, submission, compat
    spec BLOB,                    -- the request, msgpack; NULL once expired
    callback_url TEXT,
    idem_key TEXT,                -- NULL: none, or freed at expiry (unique: jobs_key)
    fingerprint BLOB,
    state TEXT NOT NULL,
    restarts INTEGER NOT NULL DEFAULT 0,  -- daemons that died with it unfinished (-1: stopped cleanly)
    created_at REAL NOT NULL,
    finished_at REAL,
    info BLOB                     -- the final JobInfo, msgpack
);
-- Partial: a job without a key costs no entry in it.
CREATE UNIQUE INDEX IF NOT EXISTS jobs_key ON jobs(idem_key) WHERE idem_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS jobs_open ON jobs(seq) WHERE finished_at IS NULL;
CREATE INDEX IF NOT EXISTS jobs_finished ON jobs(finished_at) WHERE finished_at IS NOT NULL;
"""


@dataclass
class NewJob:
    id: str
    kind: str
    spec: bytes
    created_at: float
    callback_url: str | None = None
    key: str | None = None
    fingerprint: bytes | None = None


@dataclass
class Stored:
    id: str
    kind: str
    state: str
    spec: bytes | None
    info: bytes | None
    fingerprint: bytes | None
    callback_url: str | None
    created_at: float
    restarts: int
    key: str | None


class JobIdInUse(Exception):
    pass


_COLS = "id, kind, state, spec, info, fingerprint, callback_url, created_at, restarts, idem_key"


_GET = f"SELECT {_COLS} FROM jobs WHERE id=?"
_BY_KEY = f"SELECT {_COLS} FROM jobs WHERE idem_key=? AND idem_key IS NOT NULL"  # (uses the partial jobs_key)


def _stored(row: Any) -> Stored | None:
    return None if row is None else Stored(*row)


def default_path(state_dir: Path, instance: str) -> Path:
    """One file per instance: state_dir is shared by the instances of a host."""
    return state_dir / "jobs" / f"{instance}.sqlite3"


class JobStore:
    def __init__(self, path: str | Path, results_ttl: float) -> None:
        """path: a file, or ":memory:" (nothing survives the process: for code
        that embeds a Service without a state directory)."""
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
        self.db.executescript(_SCHEMA)
        self._pending: list[tuple[Callable[[sqlite3.Connection], Any], Done | None]] = []
        self._scheduled = False  # a flush is due in the next loop iteration
        self._timer: asyncio.TimerHandle | None = None
        # The checkpointer: its own connection, used by its own thread only.
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="jobstore")
        self._ckpt: sqlite3.Connection | None = None
        if self.path != ":memory:":
            self._ckpt = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._checkpointing: asyncio.Future[Any] | None = None
        self._since_checkpoint = 0.0  # time of the first commit not yet checkpointed (0: none)
        self.batches = 0  # committed transactions (the benchmark reports ops per batch)
        self.ops = 0

    # --- start-up (synchronous: before anything is served) -------------------

    def recover(self, lost_info: Callable[[Stored], bytes]) -> tuple[list[Stored], list[str]]:
        """The jobs a previous daemon accepted and did not finish, in acceptance
        order, counted as restarted once more; those it had already restarted
        once (so two daemons died with them) become final as lost instead:
        returns (to re-queue, lost ids).  A clean stop that kept a job
        (`release`) does not count."""
        rows = [
            s
            for r in self.db.execute(f"SELECT {_COLS} FROM jobs WHERE finished_at IS NULL ORDER BY seq")
            for s in [_stored(r)]
            if s is not None
        ]
        again, lost = [], []
        now = time.time()
        self.db.execute("BEGIN IMMEDIATE")
        for s in rows:
            if s.restarts >= 1:
                self.db.execute(
                    "UPDATE jobs SET state='lost', info=?, finished_at=? WHERE id=?", (lost_info(s), now, s.id)
                )
                lost.append(s.id)
            else:
                self.db.execute("UPDATE jobs SET restarts=restarts+1 WHERE id=?", (s.id,))
                again.append(s)
        self.db.execute("COMMIT")
        return again, lost

    # --- the writer ---------------------------------------------------------

    def _queue(self, fn: Callable[[sqlite3.Connection], T]) -> asyncio.Future[T]:
        fut: asyncio.Future[T] = asyncio.get_running_loop().create_future()

        def done(ok: bool, val: Any) -> None:
            if not fut.done():
                fut.set_result(val) if ok else fut.set_exception(val)

        self._then(fn, done)
        return fut

    def _then(self, fn: Callable[[sqlite3.Connection], Any], done: Done | None, delay: float = 0.0) -> None:
        """fn in the next batch, then done(ok, its result or exception).
        delay: what nobody waits for (a result, once its job has answered)
        may wait that long for company, so one transaction carries many."""
        self._pending.append((fn, done))
        if self._scheduled:
            return
        if not delay:
            self._kick()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(delay, self._kick)

    def _kick(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._scheduled and self._pending:
            # The next loop iteration: what the rest of this one queues joins the batch.
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._scheduled = False
        batch, self._pending = self._pending, []
        if not batch:
            return
        try:
            results = self._apply([fn for fn, _ in batch])
        except Exception as e:  # the COMMIT failed (disk full, I/O error): nothing of the batch is in
            log.error("job store: a batch of %d failed: %s", len(batch), e)
            results = [(False, e)] * len(batch)
        for (_, done), (ok, val) in zip(batch, results, strict=True):
            if done is not None:
                try:
                    done(ok, val)
                except Exception:
                    log.exception("job store: after a batch")
            elif not ok:
                log.error("job store: %s", val)
        self._checkpoint()

    def _apply(self, fns: list[Callable[[sqlite3.Connection], Any]]) -> list[tuple[bool, Any]]:
        """One transaction, on the loop's thread: with synchronous=NORMAL a WAL
        commit is a few write(2)s into the page cache, tens of microseconds,
        less than a hop to a thread and back (measured: the hop, GIL hand-over
        included, cost more than the SQLite work of the batch).  What does wait
        for the disk, the checkpoint's fsyncs, runs in a thread (_checkpoint)."""
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

    # --- operations ---------------------------------------------------------

    def add(self, job: NewJob, done: Callable[[bool, Stored | Exception | None], None]) -> None:
        """Insert an accepted job; done(True, None) once committed, done(True,
        Stored) if `job.key` already names that job (nothing inserted),
        done(False, JobIdInUse) for an id taken by another job."""

        def insert(db: sqlite3.Connection) -> Stored | None:
            try:
                db.execute(
                    "INSERT INTO jobs (id, kind, spec, callback_url, idem_key, fingerprint, state, created_at)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (job.id, job.kind, job.spec, job.callback_url, job.key, job.fingerprint, OPEN, job.created_at),
                )
            except sqlite3.IntegrityError:
                if job.key is not None:
                    held = _stored(db.execute(_BY_KEY, (job.key,)).fetchone())
                    if held is not None:
                        return held
                raise JobIdInUse(job.id) from None
            return None

        self._then(insert, done)

    def finish(self, job_id: str, state: str, info: bytes, finished_at: float, done: Done | None = None) -> None:
        params = (state, info, finished_at, job_id)
        self._then(
            lambda db: db.execute("UPDATE jobs SET state=?, info=?, finished_at=? WHERE id=?", params), done, LATER
        )

    def release(self, job_id: str) -> None:
        """Left unfinished by a clean stop: runs again at the next start, and
        the stop does not count against it as a crash would."""
        self._then(lambda db: db.execute("UPDATE jobs SET restarts=-1 WHERE id=?", (job_id,)), None, LATER)

    async def get(self, job_id: str) -> Stored | None:
        # (Between batches: never inside a transaction, so it sees only committed rows.)
        return _stored(self.db.execute(_GET, (job_id,)).fetchone())

    def by_key(self, key: str) -> Stored | None:
        """The job an idempotency key names, if committed and not yet expired.
        Synchronous (one indexed SELECT, between batches): a keyed retry finds
        its job before admission, so a full queue never refuses it."""
        return _stored(self.db.execute(_BY_KEY, (key,)).fetchone())

    async def forget(self, job_id: str) -> bool:
        """A finished job's record dropped now (Judge0's DELETE): a tombstone."""
        cur = await self._queue(
            lambda db: db.execute(
                f"UPDATE jobs SET state='{EXPIRED}', spec=NULL, info=NULL, idem_key=NULL, fingerprint=NULL"
                f" WHERE id=? AND finished_at IS NOT NULL AND state!='{EXPIRED}'",
                (job_id,),
            )
        )
        return bool(cur.rowcount)

    async def sweep(self, now: float | None = None) -> int:
        """Expire results older than results_ttl, delete tombstones older than
        twice that; in chunks, so that inserts never wait behind a long sweep."""
        now = time.time() if now is None else now
        done = 0
        expire = (
            f"UPDATE jobs SET state='{EXPIRED}', spec=NULL, info=NULL, idem_key=NULL, fingerprint=NULL WHERE seq IN"
            f" (SELECT seq FROM jobs WHERE finished_at < ? AND state!='{EXPIRED}' LIMIT {SWEEP_CHUNK})"
        )
        delete = f"DELETE FROM jobs WHERE seq IN (SELECT seq FROM jobs WHERE finished_at < ? LIMIT {SWEEP_CHUNK})"
        for sql, cutoff in ((expire, now - self.ttl), (delete, now - 2 * self.ttl)):

            def chunk(db: sqlite3.Connection, sql: str = sql, cutoff: float = cutoff) -> int:
                return db.execute(sql, (cutoff,)).rowcount

            while True:
                n = await self._queue(chunk)
                done += n
                if n < SWEEP_CHUNK:
                    break
        return done

    async def count(self) -> dict[str, int]:
        """Rows by state (a full scan: for tests and benchmarks, not for a hot path)."""
        rows = await self._queue(lambda db: db.execute("SELECT state, count(*) FROM jobs GROUP BY state").fetchall())
        return {state: n for state, n in rows}

    async def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._flush()
        if self._checkpointing is not None:
            await self._checkpointing
        self._pool.shutdown(wait=True)
        if self._ckpt is not None:
            self._ckpt.close()
        self.db.close()  # (the last connection to close checkpoints and removes the WAL)
