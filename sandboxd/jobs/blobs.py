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

import sqlite3

# Blobs from this size are written in place; their chunks are this size.
IN_PLACE_FROM = 1 << 20
CHUNK = 1 << 20


def insert(db: sqlite3.Connection, table: str, key: str, column: str, rowid: int | None, data: bytes) -> None:
    """INSERT INTO table (key, column) VALUES (rowid, data), `key` its rowid
    (an INTEGER PRIMARY KEY); `table` and the names are the caller's
    constants, never input."""
    assert rowid is not None  # (the cursor's lastrowid, after its INSERT)
    if len(data) < IN_PLACE_FROM:
        db.execute(f"INSERT INTO {table} ({key}, {column}) VALUES (?, ?)", (rowid, data))
        return
    db.execute(f"INSERT INTO {table} ({key}, {column}) VALUES (?, zeroblob(?))", (rowid, len(data)))
    view = memoryview(data)
    with db.blobopen(table, column, rowid) as blob:
        for at in range(0, len(view), CHUNK):
            blob.write(view[at : at + CHUNK])


def read(db: sqlite3.Connection, table: str, column: str, rowid: int) -> bytes | None:
    """The blob of row `rowid` in one copy of it; None: no such row."""
    try:
        blob = db.blobopen(table, column, rowid, readonly=True)
    except sqlite3.OperationalError:  # ("no such rowid")
        return None
    with blob:
        return blob.read()
