"""Which idempotency keys the job store may hold: a Bloom filter that lets a
new key skip the store's SELECT (issue 18).

A waited keyed run (the socket's and HTTP's plain run) asks the store whether
its key already names a finished job before it starts (sandboxd.jobs.accept):
one indexed SELECT, ~16-20 µs of the daemon's per-run CPU as the loop runs it
(cold caches between runs), and the answer is "no" for all but a retry.  The
filter answers most of those "no"s in a microsecond.

The one rule: every key a row of the store holds is in the filter.  A key is
added when its row is queued (before its commit, so a superset); keys are
never removed (a tombstone's freed key stays, a false positive: the SELECT
tells).  False positives cost the SELECT they would have cost anyway; a false
negative would run a finished job again, and the rule excludes it.

Bounded: BITS bits (1 MiB) whatever the store holds.  Its false-positive rate
grows with the keys added, so after REBUILD_AFTER of them (and at least as
many as its rows held at the last scan: StoreKeys._built) the store builds a
new one from the keys its rows still hold (StoreKeys.rebuild: a scan of the
key index in chunks on the checkpointer's thread); what is queued meanwhile goes into both, into the
new one on the loop once the scan is done.  A store that holds more live
keys than the filter is sized for still answers right, only more often by
the SELECT.

One writer per store file (each instance has its own state directory): the
filter knows the keys this process queued and those the file held when it
was opened, not rows another process adds to the same file.  (Its probes
come from Python's str hash, randomized per process unless PYTHONHASHSEED is
set: then keys could be chosen to collide, which costs SELECTs, not answers.)

Why not a library: what is needed is two operations on a bytearray; the
Bloom-filter packages on PyPI add hashing of their own (a C extension or pure
Python mmh3), and Python's str hash is already a keyed SipHash, computed once
per string and cached in it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
from concurrent.futures import Executor

from sandboxd.jobs.storerows import KEYS_AFTER, KEYS_FIRST

log = logging.getLogger(__name__)
BITS_LOG2 = 23  # 8 Mi bits, 1 MiB
# With 3 probes, 2^19 keys in 2^23 bits: ~0.5% false positives (1 - e^(-3n/m))^3.
REBUILD_AFTER = 1 << 19
# Keys per read of a rebuild's scan: each chunk one statement, and one job on the
# store's checkpointer thread, so that a checkpoint waits for a chunk, not a scan.
SCAN_CHUNK = 10_000
_MASK64 = (1 << 64) - 1


class KeyFilter:
    """A Bloom filter of strings, 3 probes by double hashing of Python's hash()
    (randomized per process: nobody outside can aim keys at one bit)."""

    __slots__ = ("_bits", "_mask", "added")

    def __init__(self, bits_log2: int = BITS_LOG2) -> None:
        self._bits = bytearray(1 << (bits_log2 - 3))
        self._mask = (1 << bits_log2) - 1
        self.added = 0  # keys added since it was made (the store rebuilds it past REBUILD_AFTER)

    def add(self, key: str) -> None:
        bits, (p, q, r) = self._bits, self._probes(key)
        bits[p >> 3] |= 1 << (p & 7)
        bits[q >> 3] |= 1 << (q & 7)
        bits[r >> 3] |= 1 << (r & 7)
        self.added += 1

    def may_hold(self, key: str) -> bool:
        """False: no row of the store holds `key` (see the module's rule)."""
        bits, (p, q, r) = self._bits, self._probes(key)
        return bool(bits[p >> 3] & (1 << (p & 7)) and bits[q >> 3] & (1 << (q & 7)) and bits[r >> 3] & (1 << (r & 7)))

    def _probes(self, key: str) -> tuple[int, int, int]:
        """Three bit positions from one 64-bit hash (Kirsch-Mitzenmacher double hashing)."""
        h, mask = hash(key) & _MASK64, self._mask
        a, b = h & mask, (h >> 32) | 1
        return a, (a + b) & mask, (a + 2 * b) & mask

    def size(self) -> int:
        """Bytes it holds (fixed)."""
        return len(self._bits)


class StoreKeys:
    """A job store's filter (JobStore.keys) and its rebuild."""

    def __init__(self, db: sqlite3.Connection) -> None:
        """db: the store's, its schema made; the filter starts with every key its rows hold."""
        self.filter = KeyFilter()
        fill(db, self.filter)
        self._due_at = 0  # the filter's `added` at which a rebuild is due (due)
        self._built(self.filter.added)
        # Being rebuilt: the keys queued meanwhile, added to the new filter on the loop once
        # the scan is done, never while the scan's thread sets its bits (`|=` on a byte is a
        # read and a write: safe under 3.11's GIL only because no thread switch falls between
        # them, which a free-threaded build would not keep).
        self._during: list[str] | None = None
        self.scan: asyncio.Future[str | None] | None = None  # the scan's chunk on the store's thread, while it runs
        self.closing = False  # the store is closing: no new scan
        self.skipped = 0  # lookups it answered (no SELECT)
        self.asked = 0  # lookups it passed to the store (a key held, or a false positive)
        self.rebuilds = 0

    def note(self, key: str | None) -> None:
        """A row holding `key` is queued (before its commit: the filter stays a superset)."""
        if key is not None:
            self.filter.add(key)
            if self._during is not None:
                self._during.append(key)

    def may_hold(self, key: str) -> bool:
        if self.filter.may_hold(key):
            self.asked += 1
            return True
        self.skipped += 1
        return False

    def snapshot(self) -> dict[str, int]:
        """For /metrics: lookups by who answered them, and rebuilds."""
        return {"filter": self.skipped, "store": self.asked, "rebuilds": self.rebuilds}

    def due(self) -> bool:
        return self.filter.added >= self._due_at

    def _built(self, scanned: int) -> None:
        """A filter built from `scanned` keys: due after REBUILD_AFTER new ones, and at
        least as many as that, so that a store of L live keys is scanned once per L
        new keys, not after every batch (one index entry read per key noted, amortized)."""
        self._due_at = scanned + max(REBUILD_AFTER, scanned)

    def rebuild(self, quiet: bool, db: sqlite3.Connection, pool: Executor | None) -> None:
        """When due, a new filter from the keys the rows still hold.
        quiet: nothing is queued or committing in the store, so every key queued
        before is in a committed row the scan reads (fill_chunk), and every key
        queued after is noted for the new filter too.  pool: the thread that
        scans, a chunk at a time, on `db` (None: all at once, inline).  Bounded:
        the keys queued while one scan runs (2^19 rows: ~0.6 s of chunks)."""
        if not quiet or self.closing or self._during is not None or not self.due():
            return
        nxt, self._during = KeyFilter(), []
        if pool is None:
            try:
                fill(db, nxt)
            except Exception as e:  # (the old filter is still a superset: kept, tried again when due)
                self._failed(e)
                return
            self._rebuilt(nxt)
            return

        loop = asyncio.get_running_loop()

        def chunk(after: str | None) -> None:
            try:
                self.scan = loop.run_in_executor(pool, fill_chunk, db, nxt, after)
            except RuntimeError as e:  # (the pool shut down: never left half-begun)
                self._failed(e)
                return
            self.scan.add_done_callback(done)

        def done(f: asyncio.Future[str | None]) -> None:
            self.scan = None
            if f.cancelled() or f.exception() is not None:
                self._failed(f.exception() if not f.cancelled() else "cancelled")
            elif (last := f.result()) is None:
                self._rebuilt(nxt)
            elif self.closing:  # (nobody will use it)
                self._during = None
            else:
                chunk(last)

        chunk(None)

    def _failed(self, why: object) -> None:
        self._during = None
        self._due_at = self.filter.added + REBUILD_AFTER  # (tried again after as many keys, not every batch)
        log.error("job store: the key filter was not rebuilt: %s", why)

    def _rebuilt(self, nxt: KeyFilter) -> None:
        """On the loop, the scan done: the keys queued meanwhile added, then the new filter in use."""
        assert self._during is not None
        self._built(nxt.added)
        for key in self._during:
            nxt.add(key)
        self.filter, self._during = nxt, None
        self.rebuilds += 1


def fill(db: sqlite3.Connection, keys: KeyFilter) -> None:
    """Every key the store's rows hold, added to `keys`."""
    after = fill_chunk(db, keys, None)
    while after is not None:
        after = fill_chunk(db, keys, after)


def fill_chunk(db: sqlite3.Connection, keys: KeyFilter, after: str | None) -> str | None:
    """The next SCAN_CHUNK keys the rows hold, in key order past `after` (None:
    from the first), added to `keys`; the last of them, None past the end.
    Each chunk its own read: a row keyed before the scan began is in its chunk
    unless its key was freed meanwhile (a row's key only ever becomes NULL),
    and a key queued since is noted for the new filter anyway."""
    last, found = db.execute(
        KEYS_FIRST if after is None else KEYS_AFTER, ("" if after is None else after, SCAN_CHUNK)
    ).fetchone()
    if last is None:
        return None
    for key in json.loads(found):
        keys.add(key)
    return str(last)
