"""Host-wide locks: instance liveness, box uid leases, pid files.

Locks live in one fixed directory, whatever run_dir, state_dir or the config
say, so every daemon, one-shot `sandboxd run` and test engine on the host sees
the same ones (it is where earlier versions kept them by default, so a host
in mid-upgrade stays consistent).  A lock is an flock: the kernel drops it when
its holder dies, so a held lock is a live process and a crash leaves nothing
held.  A holder removes its file when it lets go, while still holding it;
every locker re-checks after locking that the file it holds is still the one
at the path (the classic flock+unlink race), and starts over if not.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

LOCK_DIR = Path("/run/sandboxd/locks")


class HostLock:
    """An exclusive flock on `path`, held until release()."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self.fd = fd

    @classmethod
    def try_path(cls, path: Path) -> HostLock | None:
        """The lock, or None if a live process holds it."""
        path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return None
            if _same_file(path, fd):
                return cls(path, fd)
            os.close(fd)  # its holder removed it meanwhile: lock the file now at the path

    @classmethod
    def try_take(cls, name: str) -> HostLock | None:
        return cls.try_path(LOCK_DIR / f"{name}.lock")

    def release(self, remove: bool = True) -> None:
        if self.fd < 0:
            return
        if remove and _same_file(self.path, self.fd):
            # While still holding it: a locker that opened it meanwhile finds it gone after locking.
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
        os.close(self.fd)
        self.fd = -1

    def write(self, text: str) -> None:
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, text.encode(), 0)

    def read(self) -> str:
        return os.pread(self.fd, 64, 0).decode(errors="replace")


def _same_file(path: Path, fd: int) -> bool:
    try:
        st = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    fs = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (fs.st_dev, fs.st_ino)


def remove_stale() -> int:
    """Remove lock files nobody holds (left by processes killed before they
    could remove their own, or by earlier versions, which never did)."""
    n = 0
    try:
        names = [p.name for p in LOCK_DIR.iterdir() if p.name.endswith(".lock")]
    except FileNotFoundError:
        return 0
    for name in names:
        lock = HostLock.try_take(name.removesuffix(".lock"))
        if lock is not None:
            lock.release()
            n += 1
    return n
