"""Large blobs into SQLite without copies of them (the job store's specs and results).

`INSERT ... VALUES (?)` with a bound blob costs twice its size at once
beside the caller's bytes: the sqlite3 module binds it as a transient copy,
and SQLite builds the whole record in memory before writing its pages
(measured: 82 MiB of peak RSS for a 40 MiB spec).  A zeroblob of the size is
inserted instead (SQLite writes its zero pages without building them in
memory) and filled in place through incremental blob I/O a chunk at a time
from a view of the caller's bytes: a chunk's worth of memory (2 MiB for the
same spec).  Small blobs are bound as before: one statement is cheaper.

Read back through incremental blob I/O too: a SELECT of a blob holds it
twice (SQLite assembles the value from its overflow pages, then the module
copies it into a bytes object), a blob handle reads the pages straight into
the one bytes object returned.  In place works only for a blob in a table
of its own (a key and the blob, the last column): SQLite builds the whole
record of a row it updates, so a zeroblob in a wider row gains nothing.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator, Sequence

# Blobs from this size are written in place; their chunks are this size.
IN_PLACE_FROM = 1 << 20
CHUNK = 1 << 20


def insert(
    db: sqlite3.Connection,
    table: str,
    key: str,
    column: str,
    rowid: int | None,
    data: bytes,
    more: Sequence[bytes | memoryview] = (),
) -> None:
    """INSERT INTO table (key, column) VALUES (rowid, data), `key` its rowid
    (an INTEGER PRIMARY KEY); `table` and the names are the caller's
    constants, never input.  more: pieces the blob goes on with after
    `data`, written from the caller's own bytes, never joined."""
    assert rowid is not None  # (the cursor's lastrowid, after its INSERT)
    if not more and len(data) < IN_PLACE_FROM:
        db.execute(f"INSERT INTO {table} ({key}, {column}) VALUES (?, ?)", (rowid, data))
        return
    size = len(data) + sum(len(p) for p in more)
    db.execute(f"INSERT INTO {table} ({key}, {column}) VALUES (?, zeroblob(?))", (rowid, size))
    with db.blobopen(table, column, rowid) as blob:
        for piece in (data, *more):
            view = memoryview(piece)
            for at in range(0, len(view), CHUNK):
                blob.write(view[at : at + CHUNK])


@contextlib.contextmanager
def opened(db: sqlite3.Connection, table: str, column: str, rowid: int) -> Iterator[sqlite3.Blob | None]:
    """The blob of row `rowid` to read from (each read(n): straight into a
    bytes object of n); None: no such row."""
    try:
        blob = db.blobopen(table, column, rowid, readonly=True)
    except sqlite3.OperationalError:  # ("no such rowid")
        yield None
        return
    with blob:
        yield blob


def read(db: sqlite3.Connection, table: str, column: str, rowid: int) -> bytes | None:
    """The blob of row `rowid` in one copy of it; None: no such row."""
    with opened(db, table, column, rowid) as blob:
        return None if blob is None else blob.read()
