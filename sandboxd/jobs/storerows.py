"""The job store's rows (sandboxd.jobs.store): the schema and its migration,
the SQL its operations share, and the bytes it holds against max_bytes."""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import msgspec

from sandboxd.jobs import blobs
from sandboxd.rates import DrainRate, retry_after

OPEN = "accepted"  # the state of a job not yet final
EXPIRED = "expired"
EVICTED = "evicted"  # a tombstone made to keep the store within max_bytes
MiB, GiB = 1 << 20, 1 << 30
MAX_BYTES_MIN, MAX_BYTES_MAX = 256 * MiB, 16 * GiB  # bounds of the default max_bytes

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY,      -- acceptance order: re-queued in it
    id TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,           -- run, submission, compat
    spec BLOB,                    -- unused (NULL): specs are in `specs` (files written before: moved at open)
    callback_url TEXT,
    idem_key TEXT,                -- NULL: none, or freed at expiry (unique: jobs_key)
    fingerprint BLOB,
    state TEXT NOT NULL,
    restarts INTEGER NOT NULL DEFAULT 0,  -- daemons that died with it unfinished (-1: stopped cleanly)
    created_at REAL NOT NULL,
    finished_at REAL,
    info BLOB,                    -- unused (NULL): results are in `results` (files written before: moved at open)
    size INTEGER NOT NULL DEFAULT 0  -- bytes of its spec and result (0 once a tombstone): max_bytes counts these
);
-- The request, msgpack; deleted when its job becomes a tombstone.
CREATE TABLE IF NOT EXISTS specs (seq INTEGER PRIMARY KEY, spec BLOB NOT NULL);
-- The final JobInfo, msgpack; deleted likewise.  A table of its own, the blob
-- its last column, so that a large one is written and read in place (blobs).
-- A large result (Split) is stored as SPLIT, its layout's length and layout, its head, its pieces.
CREATE TABLE IF NOT EXISTS results (seq INTEGER PRIMARY KEY, info BLOB NOT NULL);
-- Partial: a job without a key costs no entry in it.
CREATE UNIQUE INDEX IF NOT EXISTS jobs_key ON jobs(idem_key) WHERE idem_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS jobs_open ON jobs(seq) WHERE finished_at IS NULL;
"""
# (After migrate: `size` may be new.)  Finished rows are indexed by finished_at
# in two partial indexes, results (size > 0: eviction, expiry) and tombstones
# (size = 0: deletion), so that a job's finish writes one index entry, not two
# (a WAL page per run: benchmarks/ab_roundtrip.py).  jobs_finished, which
# covered both, was dropped from files that have it.
INDEXES = """
CREATE INDEX IF NOT EXISTS jobs_results ON jobs(finished_at) WHERE finished_at IS NOT NULL AND size > 0;
CREATE INDEX IF NOT EXISTS jobs_tombstones ON jobs(finished_at) WHERE finished_at IS NOT NULL AND size = 0;
DROP INDEX IF EXISTS jobs_finished;
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
    more: Sequence[bytes | memoryview] = ()  # the spec's pieces after `spec`, never joined (sandboxd.jobs.specpieces)


@dataclass
class Split:
    """A result stored as a small head and its large bytes after it, written
    from and read into bytes of their own, never joined (sandboxd.jobs.resultblob)."""

    head: bytes
    index: bytes  # resultblob's: where each piece goes back
    pieces: list[bytes]

    def __len__(self) -> int:
        return len(self.head) + sum(len(p) for p in self.pieces)


@dataclass
class Stored:
    id: str
    kind: str
    state: str
    spec: bytes | None
    info: bytes | Split | None
    fingerprint: bytes | None
    callback_url: str | None
    created_at: float
    restarts: int
    key: str | None


class JobIdInUse(Exception):
    pass


class StoreFull(Exception):
    """A new job does not fit in max_bytes even with every finished result evicted."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def cols(spec: str, result: str = "CASE WHEN finished_at IS NOT NULL THEN seq END") -> str:
    """A Stored's columns; in the result's place the row's seq (its `results` row,
    read in place by `stored`) once it is final, else NULL (no result yet)."""
    return f"id, kind, state, {spec}, {result}, fingerprint, callback_url, created_at, restarts, idem_key"


SPEC = "(SELECT spec FROM specs WHERE specs.seq=jobs.seq)"
# A lookup reads a spec only for a compat job (Judge0 shows its request back), not a run's 48 MiB stdin.
GET = "SELECT " + cols(f"CASE kind WHEN 'compat' THEN {SPEC} END") + " FROM jobs WHERE id=?"
BY_KEY = f"SELECT {cols('NULL')} FROM jobs WHERE idem_key=? AND idem_key IS NOT NULL"  # (uses the partial jobs_key)
# An accepted job's row (JobStore.add; its spec into `specs`).
ACCEPTED = (
    "INSERT INTO jobs (id, kind, callback_url, idem_key, fingerprint, state, created_at, size)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
# A waited job's row, final at once (JobStore.record; its result into `results`).
FINAL = (
    "INSERT INTO jobs (id, kind, callback_url, idem_key, fingerprint, state, created_at, finished_at, size)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
# The next ? keys the rows hold in key order, past a key (KEYS_AFTER) or from the first
# (KEYS_FIRST), and the last of them (sandboxd.jobs.keyfilter): the partial jobs_key
# index alone, keyed rows only; one row a chunk, so that sqlite3 gives the GIL up once
# a chunk, not once a key (a JSON array holds any key).
_KEYS = (
    "SELECT max(k), json_group_array(k) FROM (SELECT idem_key AS k FROM jobs INDEXED BY jobs_key"
    " WHERE idem_key {} ? AND idem_key IS NOT NULL ORDER BY idem_key LIMIT ?)"
)
KEYS_FIRST, KEYS_AFTER = _KEYS.format(">="), _KEYS.format(">")
UNFINISHED = f"SELECT {cols(SPEC, 'NULL')} FROM jobs WHERE finished_at IS NULL ORDER BY seq"
LIVE = f"state NOT IN ('{EXPIRED}', '{EVICTED}')"  # a row that is not a tombstone
# The oldest results first (tombstones have size 0: the partial index jobs_results skips them).
OLDEST = "SELECT seq, size FROM jobs WHERE finished_at IS NOT NULL AND size > 0 ORDER BY finished_at LIMIT ?"
SWEEP_CHUNK = 500  # rows per sweep statement: the loop (and inserts) wait for one chunk, not for all
# The sweep's two steps (`size`: each on its partial index, results or tombstones).
EXPIRE_DUE = f"seq IN (SELECT seq FROM jobs WHERE finished_at < ? AND size > 0 AND {LIVE} LIMIT {SWEEP_CHUNK})"
DELETE_DUE = (
    f"DELETE FROM jobs WHERE seq IN (SELECT seq FROM jobs WHERE finished_at < ? AND size = 0 LIMIT {SWEEP_CHUNK})"
)
TOMBSTONE = "UPDATE jobs SET state=?, idem_key=NULL, fingerprint=NULL, size=0 WHERE "


def stored(db: sqlite3.Connection, row: Any) -> Stored | None:
    """A row of `cols`, its result read from `results` (in one copy: blobs.read).
    Within one transaction, or the row may have become a tombstone in between."""
    if row is None:
        return None
    fields = list(row)
    seq = fields[4]
    fields[4] = None if seq is None else read_result(db, seq)
    return Stored(*fields)


# A split result's blob starts with this byte, which no msgpack value starts
# with (a JobInfo's msgpack, a map, is what any other result's starts with),
# then its layout's length (4 bytes, big-endian) and its layout: (index, sizes
# of its head and of each piece).
SPLIT = b"\xc1"
_layout = msgspec.msgpack.Decoder(tuple[bytes, list[int]])


def read_result(db: sqlite3.Connection, seq: int) -> bytes | Split | None:
    """One copy of it: a blob read whole, or a split one's pieces each into bytes of their own."""
    with blobs.opened(db, "results", "info", seq) as blob:
        if blob is None:
            return None
        if blob.read(len(SPLIT)) != SPLIT:
            blob.seek(0)
            return blob.read()
        index, sizes = _layout.decode(blob.read(int.from_bytes(blob.read(4), "big")))
        pieces = [blob.read(n) for n in sizes]
        return Split(pieces[0], index, pieces[1:])


def put_result(db: sqlite3.Connection, seq: int, info: bytes | Split) -> None:
    """In place, from the caller's bytes (sandboxd.jobs.blobs): no copies of a large result."""
    if isinstance(info, bytes):
        blobs.insert(db, "results", "seq", "info", seq, info)
        return
    layout = msgspec.msgpack.encode((info.index, [len(info.head), *(len(p) for p in info.pieces)]))
    start = SPLIT + len(layout).to_bytes(4, "big") + layout
    blobs.insert(db, "results", "seq", "info", seq, start, more=[info.head, *info.pieces])


def restart_unfinished(db: sqlite3.Connection, lost_info: Callable[[Stored], bytes]) -> tuple[list[Stored], list[str]]:
    """JobStore.recover's rows: the unfinished ones to run again (counted as
    restarted once more), and the ids of those restarted once already, now
    final as lost with lost_info's result."""
    rows = [s for r in db.execute(UNFINISHED) for s in [stored(db, r)] if s is not None]
    again, lost = [], []
    now = time.time()
    db.execute("BEGIN IMMEDIATE")
    for s in rows:
        if s.restarts >= 1:
            info = lost_info(s)
            sql = "UPDATE jobs SET state='lost', finished_at=?, size=size+? WHERE id=? RETURNING seq"
            put_result(db, db.execute(sql, (now, len(info), s.id)).fetchone()[0], info)
            lost.append(s.id)
        else:
            db.execute("UPDATE jobs SET restarts=restarts+1 WHERE id=?", (s.id,))
            again.append(s)
    db.execute("COMMIT")
    return again, lost


def tombstones(db: sqlite3.Connection, state: str, where: str, params: tuple[Any, ...]) -> tuple[int, int]:
    """Rows matching `where` made tombstones (spec and result gone); (rows, bytes freed)."""
    rows = db.execute(TOMBSTONE + where + " RETURNING seq, size", (state, *params)).fetchall()
    seqs = [(seq,) for seq, _ in rows]
    db.executemany("DELETE FROM specs WHERE seq=?", seqs)
    db.executemany("DELETE FROM results WHERE seq=?", seqs)
    return len(rows), sum(size for _, size in rows)


def evict_oldest(db: sqlite3.Connection, excess: int, chunk: int) -> tuple[int, int]:
    """The oldest finished results made EVICTED tombstones until `excess` bytes
    are freed (or none is left), reading `chunk` rows at a time; (rows, bytes freed)."""
    n = freed = 0
    while freed < excess:
        rows = db.execute(OLDEST, (chunk,)).fetchall()
        if not rows:
            break
        for seq, size in rows:
            if freed >= excess:
                break
            n += tombstones(db, EVICTED, "seq=?", (seq,))[0]
            freed += size
    return n, freed


def default_path(state_dir: Path, instance: str) -> Path:
    """One file per instance: state_dir is shared by the instances of a host."""
    return state_dir / "jobs" / f"{instance}.sqlite3"


def default_max_bytes(path: str) -> int:
    """A tenth of the filesystem the store is on, 256 MiB to 16 GiB (in memory: 256 MiB)."""
    if path == ":memory:":
        return MAX_BYTES_MIN
    st = os.statvfs(Path(path).parent)
    return max(MAX_BYTES_MIN, min(MAX_BYTES_MAX, st.f_blocks * st.f_frsize // 10))


RESULTS_OWN_TABLE = 1  # PRAGMA user_version from which results are in `results`


def migrate(db: sqlite3.Connection) -> None:
    """A file written before specs had a table of their own (and rows a size),
    or before results had theirs: moved, once each."""
    if not any(col[1] == "size" for col in db.execute("PRAGMA table_info(jobs)")):
        db.execute("BEGIN IMMEDIATE")
        db.execute("ALTER TABLE jobs ADD COLUMN size INTEGER NOT NULL DEFAULT 0")
        db.execute("INSERT INTO specs (seq, spec) SELECT seq, spec FROM jobs WHERE spec IS NOT NULL")
        db.execute("UPDATE jobs SET size=coalesce(length(spec), 0) + coalesce(length(info), 0), spec=NULL")
        db.execute("COMMIT")
    if db.execute("PRAGMA user_version").fetchone()[0] >= RESULTS_OWN_TABLE:
        return
    # (A new file too, once: it has no row to move.  user_version, not a scan of `info`, says it is done.)
    db.execute("BEGIN IMMEDIATE")
    db.execute("INSERT INTO results (seq, info) SELECT seq, info FROM jobs WHERE info IS NOT NULL")
    db.execute("UPDATE jobs SET info=NULL WHERE info IS NOT NULL")
    db.execute(f"PRAGMA user_version={RESULTS_OWN_TABLE}")
    db.execute("COMMIT")


class Usage:
    """Bytes the store holds (the rows' `size`), kept in memory: `open` for
    unfinished jobs (reserved when an insert is queued), `done` for results
    not yet tombstones."""

    def __init__(self, db: sqlite3.Connection, limit: int) -> None:
        self.limit = limit
        q = "SELECT coalesce(sum(size), 0) FROM jobs WHERE "
        self.open = int(db.execute(q + "finished_at IS NULL").fetchone()[0])
        self.done = int(db.execute(q + "finished_at IS NOT NULL").fetchone()[0])
        self.evicted = 0  # results evicted to stay within the limit
        self.refused = 0  # new jobs refused: the unfinished ones fill it
        self.finishing = DrainRate()  # bytes of unfinished jobs becoming final per second (Retry-After)

    @property
    def used(self) -> int:
        return self.open + self.done

    def check(self, n: int) -> None:
        """Raises StoreFull if n more bytes of a new job cannot fit, even with every result evicted."""
        if self.open + n <= self.limit or self.open == 0:  # (one job larger than the limit: alone)
            return
        self.refused += 1
        short = self.open + n - self.limit
        why = (
            f"the job store is full: {self.open} bytes of unfinished jobs, this one {n} bytes, "
            f"jobs.store_max_bytes {self.limit}; retry when jobs have finished"
        )
        raise StoreFull(why, retry_after(short, self.finishing.rate()))

    def snapshot(self) -> dict[str, int]:
        return {
            "limit": self.limit,
            "used": self.used,
            "unfinished": self.open,
            "results": self.done,
            "evicted": self.evicted,
            "refused": self.refused,
        }


R = TypeVar("R")


def whole(write: Callable[[sqlite3.Connection], R]) -> Callable[[sqlite3.Connection], R]:
    """write run in a savepoint of the batch's transaction: its statements (a
    row and its result) all or none, and an error undoes only them, not the
    other jobs' writes in the batch."""

    def run(db: sqlite3.Connection) -> R:
        db.execute("SAVEPOINT one")
        try:
            return write(db)
        except BaseException:
            db.execute("ROLLBACK TO one")
            raise
        finally:
            db.execute("RELEASE one")

    return run
