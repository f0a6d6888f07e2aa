"""Claiming a Unix socket path without taking it from a live process.

A socket file a live process answers on is refused; one nobody answers
(ECONNREFUSED: its daemon died) is stale and replaced.  On exit a process
removes the file only if it is still the one it bound (same st_dev/st_ino):
another daemon may have replaced it since.
"""

from __future__ import annotations

import contextlib
import os
import socket
import stat
from pathlib import Path

from sandboxd.hostlock import HostLock


class SocketInUse(RuntimeError):
    pass


_bound: dict[str, tuple[int, int]] = {}  # path -> (st_dev, st_ino) of the socket file we bound there


def check_free(path: str) -> None:
    """Raise SocketInUse if a live process answers on `path`.  A socket file
    nobody answers (ECONNREFUSED: its daemon died) is stale: bind() replaces it."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise SocketInUse(f"socket {path}: exists and is not a socket; remove it or choose another `socket`")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC) as s:
        s.settimeout(2)
        try:
            s.connect(path)
        except (ConnectionRefusedError, FileNotFoundError):
            return
        except TimeoutError:
            pass  # a live listener with a full backlog
    raise SocketInUse(
        f"socket {path}: a live process answers on it (another sandboxd?); stop it or choose another `socket`"
    )


def bind(path: str) -> socket.socket:
    """A listening socket bound at `path`, with no permissions yet (chmod it)."""
    # Under a lock on the path: two daemons starting on one stale socket never
    # unlink the one the other just bound.  Next to the socket, not in the
    # host-wide lock directory: the coordinator (an unprivileged dynamic user)
    # may write only its own runtime directory.
    lock = HostLock.try_path(Path(path + ".lock"))
    if lock is None:
        raise SocketInUse(f"socket {path}: another process is binding it right now")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        check_free(path)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # stale (check_free raised otherwise)
        # Created with no permissions; opened up only after chmod/chown, so
        # there is no window where anyone else can connect.
        old = os.umask(0o777)
        try:
            sock.bind(path)
        finally:
            os.umask(old)
        sock.listen(128)
        st = os.stat(path)
        _bound[path] = (st.st_dev, st.st_ino)
    except BaseException:
        sock.close()
        raise
    finally:
        lock.release()
    return sock


def unlink_own(path: str) -> None:
    """Remove the socket file at `path` only if it is still the one we bound
    (another daemon may have replaced it since: its socket must stay)."""
    ident = _bound.pop(path, None)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if ident == (st.st_dev, st.st_ino):
        os.unlink(path)
