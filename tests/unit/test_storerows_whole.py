"""storerows.whole: one job's writes in a batch are all or none, and a
failure among them undoes only them, never another job's writes in the same
batch transaction (a real SQLite database: what the job store runs on)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from sandboxd.jobs.storerows import whole


def _db(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("CREATE TABLE jobs (id TEXT PRIMARY KEY)")
    db.execute("CREATE TABLE results (id TEXT PRIMARY KEY, blob BLOB NOT NULL)")
    return db


def _ids(db: sqlite3.Connection, table: str) -> list[str]:
    return [r[0] for r in db.execute(f"SELECT id FROM {table} ORDER BY id")]


def test_a_failed_write_undoes_only_its_own_statements(tmp_path: Path) -> None:
    db = _db(tmp_path / "s.db")

    def first(c: sqlite3.Connection) -> str:
        c.execute("INSERT INTO jobs VALUES ('a')")
        c.execute("INSERT INTO results VALUES ('a', x'00')")
        return "a"

    def broken(c: sqlite3.Connection) -> str:
        c.execute("INSERT INTO jobs VALUES ('b')")
        c.execute("INSERT INTO results VALUES ('b', NULL)")  # NOT NULL: its result cannot be written
        return "b"

    def last(c: sqlite3.Connection) -> str:
        c.execute("INSERT INTO jobs VALUES ('c')")
        return "c"

    db.execute("BEGIN")  # (one batch: the writer's transaction around several jobs' writes)
    assert whole(first)(db) == "a"
    with pytest.raises(sqlite3.IntegrityError):
        whole(broken)(db)
    assert whole(last)(db) == "c"
    db.execute("COMMIT")

    # b's row went with its result: no job row is left without the result it was written with.
    assert _ids(db, "jobs") == ["a", "c"]
    assert _ids(db, "results") == ["a"]


def test_a_write_interrupted_by_a_base_exception_is_undone_too(tmp_path: Path) -> None:
    db = _db(tmp_path / "s.db")

    def cancelled(c: sqlite3.Connection) -> None:
        c.execute("INSERT INTO jobs VALUES ('a')")
        raise KeyboardInterrupt  # (not an Exception: still rolled back)

    db.execute("BEGIN")
    with pytest.raises(KeyboardInterrupt):
        whole(cancelled)(db)
    db.execute("INSERT INTO jobs VALUES ('z')")  # the batch's transaction goes on
    db.execute("COMMIT")
    assert _ids(db, "jobs") == ["z"]
