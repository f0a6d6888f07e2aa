"""The file store's pure parts: LRU byte accounting and pins, and the disk store
on a temporary directory (no root, no daemon)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from sandboxd.filestore import LRU, FileStore, HashMismatch, StoreFull, TooLarge
from sandboxd.schema import (
    FileIn,
    RunRequest,
    SchemaError,
    Submission,
    TestCase,
    file_refs,
    resolve_refs,
    validate_run,
)


def test_lru_evicts_oldest_unpinned_first() -> None:
    lru = LRU(100)
    for name in "abc":
        lru.add(name, 30)
    assert lru.total == 90
    lru.touch("a")  # now b is the oldest
    assert lru.victims(20) == ["b"]
    lru.pin(["b"])
    assert lru.victims(20) == ["c"]
    lru.unpin(["b"])
    assert lru.victims(50) == ["b", "c"]


def test_lru_refuses_when_everything_is_pinned() -> None:
    lru = LRU(100)
    lru.add("a", 60)
    lru.pin(["a", "a"])
    lru.unpin(["a"])  # still pinned once
    with pytest.raises(StoreFull):
        lru.victims(50)
    lru.unpin(["a"])
    assert lru.victims(50) == ["a"]


def test_store_checks_hashes_and_sizes_and_evicts(tmp_path: Path) -> None:
    st = FileStore(tmp_path / "f", max_bytes=1 << 20, max_file=600 << 10)
    a, b, c = (bytes([i]) * (400 << 10) for i in range(3))
    ha, hb, hc = (hashlib.sha256(x).hexdigest() for x in (a, b, c))
    w = st.writer()
    w.write(a)
    with pytest.raises(HashMismatch, match=hb):
        w.commit(hb)
    w.abort()
    assert st.put(a) == ha and st.put(a) == ha and st.lru.total == len(a)  # (again: idempotent)
    st.pin([ha])
    st.put(b)
    st.put(c)  # over 1 MiB: b goes, a is pinned
    assert st.size(ha) == len(a) and st.size(hb) is None and st.read(hc) == c
    big = st.writer()
    with pytest.raises(TooLarge):
        big.write(b"x" * (601 << 10))
    big.abort()
    assert sorted(os.listdir(tmp_path / "f")) == sorted([ha, hc])


def test_store_comes_back_after_a_restart_and_refuses_links(tmp_path: Path) -> None:
    st = FileStore(tmp_path / "f", max_bytes=1 << 20, max_file=1 << 20)
    h = st.put(b"hello")
    st.close()
    (tmp_path / "f" / ("0" * 64)).symlink_to("/etc/passwd")
    st = FileStore(tmp_path / "f", max_bytes=1 << 20, max_file=1 << 20)
    assert st.read(h) == b"hello" and st.size("0" * 64) is None
    with pytest.raises(OSError):
        os.open("0" * 64, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=st.dirfd)


def test_refs_name_their_fields_and_resolve() -> None:
    h = "a" * 64
    sub = Submission(lang="c", source_sha256=h, tests=[TestCase(input=b"1"), TestCase(input_sha256=h)])
    assert file_refs(sub) == [("source_sha256", h), ("tests[1].input_sha256", h)]
    resolve_refs(sub, lambda sha: sha.encode())
    assert sub.source == h.encode() and sub.tests[1].input == h.encode() and file_refs(sub) == []
    with pytest.raises(SchemaError, match="stdin_sha256"):
        validate_run(RunRequest(cmd=["cat"], stdin=b"x", stdin_sha256=h))


def test_a_run_about_to_go_into_a_box_names_no_hash() -> None:
    """The engine's check: a hash nothing resolved would otherwise run as empty bytes."""
    req = RunRequest(cmd=["cat"], files_in=[FileIn("a", sha256="b" * 64)])
    assert validate_run(req) is req  # (at entry: fine, the daemon resolves it)
    with pytest.raises(SchemaError, match=r"files_in\[0\].sha256"):
        validate_run(req, resolved=True)
