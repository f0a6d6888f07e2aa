"""Which idempotency keys the job store may hold, answered in memory (issue 18).

A keyed run its client waits for asks the store, before it starts, whether
its key already names a finished job (sandboxd.jobs.accept: `_taken`), and
almost every such key is new: clients send a fresh key with each request.
That indexed SELECT cost ~5% of the daemon's CPU per socket run (py-spy,
benchmarks/README.md "Issue 18: fresh keys"); a Bloom filter answers
"certainly not" for a fresh key in about a microsecond and "maybe"
otherwise, and then the SELECT decides as before.

Never "not" for a key the store holds: a key is set when its row is queued
for writing, before it commits, and a rebuild reads the rows through the
store's own write queue, in order with every write (so each row is either
read by it or added to the new filter while it runs).  Until the first
build is done, every lookup goes to SQLite.

Bounded whatever the store holds: BITS bits (1 MiB).  Keys freed by expiry
stay set until the next rebuild, which starts after REBUILD_AFTER keys have
been added and reads the live keys CHUNK rows per batch, so no batch holds
the event loop for long (a build that fails keeps the filter it had, and is
tried again after as many more keys).  At 600,000 live keys (the default
600 s of results at 1,000 keyed runs a second) about one fresh key in 250
falls through to SQLite right after a build, one in 12 just before the next
(1.6 million keys set).  The hash is Python's own for str (randomised per process, cached
on the key): keys crafted to collide only make their own lookups ask SQLite.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)
BITS = 1 << 23
HASHES = 4
REBUILD_AFTER = 1 << 20
CHUNK = 2000
KEYS_AFTER = "SELECT seq, idem_key FROM jobs WHERE seq > ? AND idem_key IS NOT NULL ORDER BY seq LIMIT ?"
Queue = Callable[[Callable[[sqlite3.Connection], Any], Callable[[bool, Any], None]], None]


class Bloom:
    __slots__ = ("bits",)

    def __init__(self) -> None:
        self.bits = bytearray(BITS >> 3)

    @staticmethod
    def _positions(key: str) -> list[int]:
        h = hash(key) & 0xFFFF_FFFF_FFFF_FFFF
        a, b = h & (BITS - 1), (h >> 32) | 1  # (double hashing: an odd step visits distinct bits)
        return [(a + i * b) & (BITS - 1) for i in range(HASHES)]

    def add(self, key: str) -> None:
        bits = self.bits
        for p in self._positions(key):
            bits[p >> 3] |= 1 << (p & 7)

    def __contains__(self, key: str) -> bool:
        bits = self.bits
        return all(bits[p >> 3] & (1 << (p & 7)) for p in self._positions(key))


class KeyFilter:
    """The store's keys: add() as rows are queued, may_hold() before a SELECT."""

    def __init__(self, queue: Queue) -> None:
        self._queue = queue  # (the store's write queue: JobStore._then)
        self._live: Bloom | None = None  # None: not built yet, every key may be held
        self._next: Bloom | None = None  # being built: keys added meanwhile go to both
        self.added = 0  # keys added since the live filter's build began
        self.builds = 0  # completed builds (tests and benchmarks)

    def may_hold(self, key: str) -> bool:
        return self._live is None or key in self._live

    def add(self, key: str) -> None:
        """A key whose row has just been queued for writing."""
        self.added += 1
        if self._next is None and self.added >= REBUILD_AFTER:
            self.build()  # (first: this key goes into the new filter too)
        for f in (self._live, self._next):
            if f is not None:
                f.add(key)

    def build(self) -> None:
        """From the store's rows, CHUNK at a time; then it replaces the live filter."""
        new = self._next = Bloom()
        added_before = self.added

        def chunk(after: int) -> None:
            def read(db: sqlite3.Connection) -> list[tuple[int, str]]:
                return db.execute(KEYS_AFTER, (after, CHUNK)).fetchall()

            def done(ok: bool, rows: Any) -> None:
                if self._next is not new:
                    return
                if not ok:  # (kept as it was: a filter that says "maybe" too often is still right)
                    log.error("job store: reading its keys failed: %s", rows)
                    self._next = None
                    self.added -= added_before  # (tried again after REBUILD_AFTER more keys, not at each)
                    return
                for _, key in rows:
                    new.add(key)
                if len(rows) == CHUNK:
                    chunk(rows[-1][0])
                    return
                self._live, self._next = new, None
                self.added -= added_before
                self.builds += 1

            self._queue(read, done)

        chunk(0)
