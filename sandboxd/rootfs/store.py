"""Per-language rootfs trees on disk: where they live, which is live, which
are in use, and removing the rest.

Layout: STATE/rootfs/LANG/<content-hash>/ (a tree) and STATE/rootfs/LANG/current
(a symlink to the live one).  A tree is never modified after it is named:
switching is an atomic rename of the `current` symlink.  A daemon whose pool
runs on a tree holds a shared flock on it (TreeHold); cleanup takes the lock
exclusively, so it never removes a tree in use.  Building a tree is the app's
(sandboxd/app/rootfs_build.py): it verifies the tree in an Engine.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import stat
from pathlib import Path


def lang_dir(state: Path, lang: str) -> Path:
    return state / "rootfs" / lang


def current(state: Path, lang: str) -> Path | None:
    """The live tree of a language, if one was built."""
    link = lang_dir(state, lang) / "current"
    if not link.is_symlink():
        return None
    tree = link.parent / os.readlink(link)
    return tree if (tree / "usr").is_dir() else None


def switch(state: Path, lang: str, tree: Path) -> None:
    """Make `tree` the language's live tree: one atomic rename."""
    d = lang_dir(state, lang)
    tmp = d / f".current-{os.getpid()}"
    if tmp.is_symlink():
        tmp.unlink()
    os.symlink(tree.name, tmp)
    os.replace(tmp, d / "current")


class TreeHold:
    """A shared lock on a tree while a pool runs on it: remove_unused leaves it alone.
    Released by the kernel if the process dies."""

    def __init__(self, tree: Path) -> None:
        fd = os.open(tree, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def in_use(tree: Path) -> bool:
    """Whether a daemon holds the tree (a TreeHold)."""
    fd = os.open(tree, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def remove_unused(state: Path, lang: str, keep: set[Path]) -> list[Path]:
    """Remove the language's trees other than `current` and `keep` (in use)."""
    live = current(state, lang)
    removed: list[Path] = []
    d = lang_dir(state, lang)
    if not d.is_dir():
        return removed
    for p in d.iterdir():
        if p.is_dir() and not p.is_symlink() and p != live and p not in keep and not p.name.startswith("."):
            if in_use(p):
                continue
            shutil.rmtree(p)
            removed.append(p)
    return removed


def size_of(path: Path) -> int:
    total = 0
    for dp, _, fns in os.walk(path):
        for f in fns:
            st = os.lstat(os.path.join(dp, f))
            if stat.S_ISREG(st.st_mode):
                total += st.st_blocks * 512
    return total


def listing(state: Path) -> list[dict[str, object]]:
    out: list[dict[str, object]] = []
    root = state / "rootfs"
    if not root.is_dir():
        return out
    for d in sorted(root.iterdir()):
        live = current(state, d.name)
        for t in sorted(p for p in d.iterdir() if p.is_dir() and not p.is_symlink() and not p.name.startswith(".")):
            out.append({"lang": d.name, "tree": t.name, "size": size_of(t), "live": t == live})
    return out
