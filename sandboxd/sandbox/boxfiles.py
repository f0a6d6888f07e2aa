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

from sandboxd.schema import FileOut

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


def read_out(boxfd: int, path: str, max_size: int) -> bytes:
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
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise Refused("not a regular file")
        if st.st_nlink != 1:
            raise Refused("has hard links")
        if st.st_dev != box_dev:
            raise Refused("not on the box's file system")
        if st.st_size > max_size:
            raise Refused(f"{st.st_size} bytes, more than the limit of {max_size}")
        chunks = []
        left = max_size + 1
        while left > 0:
            b = os.read(fd, min(left, 1 << 20))
            if not b:
                break
            chunks.append(b)
            left -= len(b)
        data = b"".join(chunks)
        if len(data) > max_size:
            raise Refused(f"more than the limit of {max_size} bytes")
        return data
    finally:
        os.close(fd)


def read_files_out(boxfd: int, paths: list[str], max_size: int, max_total: int) -> list[FileOut]:
    """Each of `paths` (distinct: the schema refuses duplicates), at most
    `max_size` bytes each and `max_total` together: a file that would take the
    run past the total is refused by its size before a byte of it is read."""
    out: list[FileOut] = []
    left = max_total
    for p in paths:
        limit = min(max_size, left)
        try:
            data = read_out(boxfd, p, limit)
        except Refused as e:
            msg = str(e)
            if limit < max_size and "limit" in msg:
                msg += f" (files out of one run: at most {max_total} bytes together)"
            out.append(FileOut(p, error=msg))
            continue
        left -= len(data)
        out.append(FileOut(p, content=data))
    return out
