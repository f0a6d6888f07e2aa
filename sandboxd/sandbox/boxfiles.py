"""Copying files into and out of a box without trusting anything in it.

The host side never resolves a path the program could have touched: every
step is an openat() relative to the box's /box directory fd (handed over by
the agent), with O_NOFOLLOW on each component, and the final file must be a
regular file with one link on the box's own tmpfs.  Symlinks, fifos, devices,
directories, hard links and oversize files are refused, never followed or
opened for real (CVE-2024-28185, CVE-2024-28189, go-judge #176).
Ownership is changed only through the fd of a file we just created.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable

from sandboxd.schema import FileOut

# room(n): None if n more bytes of files out may be held, else why not (sandboxd.engine.budget.ResultHold).
Room = Callable[[int], str | None]
_DIR = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class Refused(Exception):
    """A file that cannot be copied; the message says why (shown to users)."""


def _walk(boxfd: int, parts: list[str], create: bool, uid: int, gid: int) -> int:
    """fd of the directory holding the last component; caller closes it."""
    fd = os.dup(boxfd)
    try:
        for part in parts:
            if create:
                try:
                    os.mkdir(part, 0o755, dir_fd=fd)
                    os.chown(part, uid, gid, dir_fd=fd, follow_symlinks=False)
                except FileExistsError:
                    pass
            try:
                nfd = os.open(part, _DIR, dir_fd=fd)
            except OSError as e:
                if e.errno in (errno.ENOTDIR, errno.ELOOP):
                    raise Refused(f"{part!r} is not a directory (or is a symlink)") from None
                if e.errno == errno.ENOENT:
                    raise Refused("no such file") from None
                raise
            os.close(fd)
            fd = nfd
            # O_PATH|O_NOFOLLOW on a symlink yields the link itself; O_DIRECTORY
            # should refuse it, and fstat makes sure.
            if not stat.S_ISDIR(os.fstat(fd).st_mode):
                raise Refused(f"{part!r} is not a directory")
        return fd
    except BaseException:
        os.close(fd)
        raise


def write_in(boxfd: int, path: str, data: bytes, executable: bool, uid: int, gid: int) -> None:
    *dirs, name = path.split("/")
    dfd = _walk(boxfd, dirs, True, uid, gid)
    try:
        mode = 0o755 if executable else 0o644
        try:
            fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=dfd)
        except FileExistsError:
            raise Refused(f"{path!r} exists") from None
    finally:
        os.close(dfd)
    try:
        os.fchown(fd, uid, gid)
        os.fchmod(fd, mode)  # umask must not decide executability
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
    finally:
        os.close(fd)


def read_out(boxfd: int, path: str, max_size: int, room: Room | None = None) -> bytes:
    """The file's bytes, read into one buffer of its size (no chunks joined:
    a second copy of a 16 MiB file).  room: asked for the size before a byte
    is read (the daemon's memory budget); its refusal is the file's."""
    *dirs, name = path.split("/")
    dfd = _walk(boxfd, dirs, False, 0, 0)
    try:
        box_dev = os.fstat(boxfd).st_dev
        try:
            # O_NONBLOCK: a planted fifo opens at once instead of hanging us.
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC, dir_fd=dfd)
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise Refused("is a symlink") from None
            if e.errno == errno.ENOENT:
                raise Refused("no such file") from None
            if e.errno in (errno.ENXIO, errno.EISDIR):
                raise Refused("not a regular file") from None
            raise
    finally:
        os.close(dfd)
    try:
        size = _checked_size(fd, box_dev, max_size)
        why = None if room is None else room(size)
        if why is not None:
            raise Refused(why)
        return _read_whole(fd, size)
    finally:
        os.close(fd)


def _checked_size(fd: int, box_dev: int, max_size: int) -> int:
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        raise Refused("not a regular file")
    if st.st_nlink != 1:
        raise Refused("has hard links")
    if st.st_dev != box_dev:
        raise Refused("not on the box's file system")
    if st.st_size > max_size:
        raise Refused(f"{st.st_size} bytes, more than the limit of {max_size}")
    return st.st_size


def _read_whole(fd: int, size: int) -> bytes:
    """Exactly `size` bytes, normally in one read(2) into one bytes object (a
    regular file on tmpfs is read whole; os.read trims its buffer in place).
    Every process of the box is dead by now, so the file cannot change; one
    that did anyway (a longer or shorter read) is refused, not returned in part."""
    data = os.read(fd, size + 1) if size else b""
    while 0 < len(data) < size:  # (a short read: a signal; the rest appended, a copy, rarely)
        more = os.read(fd, size + 1 - len(data))
        if not more:
            break
        data += more
    if len(data) != size or (not size and os.read(fd, 1)):
        raise Refused("changed while it was read")
    return data


def read_files_out(
    boxfd: int, paths: list[str], max_size: int, max_total: int, room: Room | None = None
) -> list[FileOut]:
    """Each of `paths` (distinct: the schema refuses duplicates), at most
    `max_size` bytes each and `max_total` together: a file that would take the
    run past the total is refused by its size before a byte of it is read.
    room(n): the daemon's leave to hold n bytes more, asked before each file
    is read (None: granted; else the reason it is not, which the file gets)."""
    out: list[FileOut] = []
    left = max_total
    for p in paths:
        limit = min(max_size, left)
        try:
            data = read_out(boxfd, p, limit, room)
        except Refused as e:
            msg = str(e)
            if limit < max_size and "limit" in msg:
                msg += f" (files out of one run: at most {max_total} bytes together)"
            out.append(FileOut(p, error=msg))
            continue
        left -= len(data)
        out.append(FileOut(p, content=data))
    return out
