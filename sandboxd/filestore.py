"""The content-addressed file store on one host: files named by their SHA-256.

A judge uploads a problem's tests once (PUT /v1/files/{sha256}) and names them
by hash in every run and submission after.  The store is a directory of this
instance's own (state_dir/files/INSTANCE), bounded by bytes: least recently
used files go first, never one a queued or running job holds (a pin).  Compiled
programs live here too, under the compile key ("c-" + hex), so that rejudges
and checkers do not compile again and the fleet can share them.

Only this daemon writes the directory, but nothing in it is trusted: every
access is relative to the directory's fd with O_NOFOLLOW, must find a regular
file, and a file is written to a temporary name, fsynced, then renamed into
place (a crash leaves a whole file or none).  Pure of any layer: the
coordinator and the engine use it alike.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import secrets
import stat
from collections import Counter, OrderedDict
from collections.abc import Iterable
from pathlib import Path

log = logging.getLogger(__name__)

HEX = re.compile(r"[0-9a-f]{64}")
NAME = re.compile(r"(c-)?[0-9a-f]{64}")  # a content hash, or "c-" + a compile key
_TMP = ".tmp-"
_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NOCTTY | os.O_NONBLOCK | os.O_CLOEXEC
CHUNK = 1 << 20


class StoreError(Exception):
    """A file the store cannot take; the message names the reason."""


class TooLarge(StoreError):
    pass


class HashMismatch(StoreError):
    pass


class StoreFull(StoreError):
    """No room: what is stored is pinned by queued or running jobs."""


def check_name(name: str) -> str:
    if not NAME.fullmatch(name):
        raise StoreError(f"{name!r} is not a lowercase hex SHA-256 (64 characters 0-9a-f)")
    return name


class LRU:
    """Byte accounting and eviction order, with pins: pure, no files."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.sizes: OrderedDict[str, int] = OrderedDict()  # oldest first
        self.pins: Counter[str] = Counter()
        self.total = 0

    def add(self, name: str, size: int) -> None:
        old = self.sizes.pop(name, None)
        self.total += size - (old or 0)
        self.sizes[name] = size

    def touch(self, name: str) -> int | None:
        size = self.sizes.get(name)
        if size is not None:
            self.sizes.move_to_end(name)
        return size

    def remove(self, name: str) -> None:
        self.total -= self.sizes.pop(name, 0)

    def pin(self, names: Iterable[str]) -> None:
        self.pins.update(names)

    def unpin(self, names: Iterable[str]) -> None:
        self.pins.subtract(names)
        for n in [n for n, c in self.pins.items() if c <= 0]:
            del self.pins[n]

    def victims(self, incoming: int) -> list[str]:
        """Least recently used unpinned names to remove so that `incoming` more
        bytes fit; StoreFull if even all of them would not make room."""
        need = self.total + incoming - self.max_bytes
        out: list[str] = []
        for name, size in self.sizes.items():
            if need <= 0:
                break
            if self.pins[name] <= 0:
                out.append(name)
                need -= size
        if need > 0:
            raise StoreFull(
                f"the file store holds {self.total} of its {self.max_bytes} bytes in files that queued "
                "or running jobs use; retry when they finish, or raise files.max_bytes"
            )
        return out


class Writer:
    """One upload in progress: bytes go to a temporary file as they come, hashed."""

    def __init__(self, store: FileStore) -> None:
        self.store = store
        self.tmp = _TMP + secrets.token_hex(8)
        self.fd = os.open(
            self.tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=store.dirfd
        )
        self.hash = hashlib.sha256()
        self.size = 0

    def write(self, chunk: bytes | memoryview) -> None:
        self.size += len(chunk)
        if self.size > self.store.max_file:
            raise TooLarge(f"more than files.max_file = {self.store.max_file} bytes")
        self.hash.update(chunk)
        view = memoryview(chunk)
        while view:
            view = view[os.write(self.fd, view) :]

    def commit(self, expected: str | None = None) -> str:
        """Into place under its hash (HashMismatch if not `expected`); returns the name."""
        digest = self.hash.hexdigest()
        if expected is not None and digest != expected:
            raise HashMismatch(f"the body's SHA-256 is {digest}, not {expected}")
        return self.commit_as(digest)

    def commit_as(self, name: str) -> str:
        st = self.store
        if st.lru.touch(name) is not None:  # (stored already: idempotent)
            self.abort()
            return name
        for v in st.lru.victims(self.size):
            st.remove(v)
        os.fsync(self.fd)
        os.close(self.fd)
        self.fd = -1
        os.rename(self.tmp, name, src_dir_fd=st.dirfd, dst_dir_fd=st.dirfd)
        os.fsync(st.dirfd)  # (the rename itself survives a crash)
        st.lru.add(name, self.size)
        return name

    def abort(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.tmp, dir_fd=self.store.dirfd)


class FileStore:
    """The store of one instance (one directory, never shared with another)."""

    def __init__(self, root: Path, max_bytes: int, max_file: int) -> None:
        self.root = root
        self.max_file = min(max_file, max_bytes)
        self.lru = LRU(max_bytes)
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.dirfd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        st = os.fstat(self.dirfd)
        if st.st_uid != os.geteuid() or st.st_mode & 0o022:
            os.close(self.dirfd)
            raise StoreError(f"{root}: must be ours and writable by nobody else")
        self._scan()

    def _scan(self) -> None:
        """What an earlier run left: whole files back in the LRU (oldest first), temporaries removed."""
        found: list[tuple[float, str, int]] = []
        for name in os.listdir(self.dirfd):
            st = os.stat(name, dir_fd=self.dirfd, follow_symlinks=False)
            if NAME.fullmatch(name) and stat.S_ISREG(st.st_mode):
                found.append((st.st_atime, name, st.st_size))
            elif name.startswith(_TMP) and stat.S_ISREG(st.st_mode):
                os.unlink(name, dir_fd=self.dirfd)
            else:
                log.warning("file store %s: ignoring %r (not ours)", self.root, name)
        for _, name, size in sorted(found):
            self.lru.add(name, size)

    def close(self) -> None:
        os.close(self.dirfd)

    # --- reads ----------------------------------------------------------------

    def size(self, name: str) -> int | None:
        """Its size if stored (and now the most recently used), else None."""
        return self.lru.touch(name)

    def missing(self, names: Iterable[str]) -> list[str]:
        return [n for n in names if self.lru.touch(n) is None]

    def open(self, name: str) -> int:
        """A read fd of a stored file (the caller closes it); FileNotFoundError if not stored."""
        if self.lru.touch(check_name(name)) is None:
            raise FileNotFoundError(name)
        fd = os.open(name, _READ, dir_fd=self.dirfd)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise FileNotFoundError(name)
        return fd

    def read(self, name: str) -> bytes:
        fd = self.open(name)
        try:
            chunks = []
            while b := os.read(fd, CHUNK):
                chunks.append(b)
            return b"".join(chunks)
        finally:
            os.close(fd)

    # --- writes ---------------------------------------------------------------

    def writer(self) -> Writer:
        return Writer(self)

    def put(self, data: bytes, name: str | None = None) -> str:
        """Whole bytes at once: under their hash, or under `name` (a compile key)."""
        w = self.writer()
        try:
            w.write(data)
            return w.commit() if name is None else w.commit_as(check_name(name))
        except BaseException:
            w.abort()
            raise

    def remove(self, name: str) -> None:
        self.lru.remove(name)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name, dir_fd=self.dirfd)

    def pin(self, names: Iterable[str]) -> None:
        self.lru.pin(names)

    def unpin(self, names: Iterable[str]) -> None:
        self.lru.unpin(names)
