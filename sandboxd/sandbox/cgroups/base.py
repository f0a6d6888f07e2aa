"""What both hierarchies share: the per-box and per-run handles, the Backend
interface, and the file operations (writes by fd, retried rmdir, kill by listing)."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

from sandboxd.sandbox.memstat import MemoryUse

log = logging.getLogger(__name__)


class CgroupError(RuntimeError):
    pass


# Bytes of non-file memory the runs may leave charged to a reused group (v1's,
# and v2's on Linux 6.12+) before it is dropped (v1 force_empty, v2 a fresh group).
DROP_LEFTOVER_ABOVE = 1 << 20


def write(path: Path, value: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def read(path: Path) -> str:
    with open(path) as f:
        return f.read()


@dataclass
class RunCgroup:
    join_fds: list[int]
    cpu_fd: int
    memory_limit: int
    path: Path | None = None  # v2: the per-run leaf (None: the box's reused group)
    oom_before: int = 0  # the reused group's oom_kill count before the run (v1, v2 reused)
    ooms_before: int = 0  # v2 reused: its memory.events `oom` count before the run
    # Reused group: an upper bound of the file LRU bytes charged when its peak
    # was reset (the last finish's read, capped by the usage at the reset).
    file_before: int = 0
    owned: bool = True  # False: the fds belong to the box (v1 keeps them open across runs)
    into: bool = False  # v2: join_fds is [the leaf's directory], for clone3(CLONE_INTO_CGROUP)
    born_in: bool = False  # the agent placed the run with it (False: it fell back to a write)

    def close_fds(self) -> None:
        if self.owned:
            for fd in (*self.join_fds, self.cpu_fd):
                os.close(fd)
        self.join_fds = []
        self.cpu_fd = -1


@dataclass
class BoxCgroup:
    backend: Backend
    name: str
    dirs: dict[str, Path] = field(default_factory=dict)
    _limits: tuple[int, int] = (0, 0)
    _runs: int = 0
    _fds: dict[str, int] = field(default_factory=dict)
    _residue: int = 0  # v1: kernel memory an earlier run left that force_empty could not drop
    # v1: the group's oom_kill count as the last run's finish read it: the next
    # run's baseline (no process is in the group between runs).
    _oom_kills: int | None = None
    _ooms: int = 0  # v2 reused: the `oom` count, as _oom_kills
    # v1: the file LRU bytes the last finish(reset_done=False) read, which
    # between_runs() reuses: one memory.numa_stat read per run.
    _file_bytes: int | None = None
    # Reused group: the file LRU bytes the last finish read (0: a new group).
    # No process charges the group until the next run, so at its reset there
    # are at most these (reclaim only lowers them).
    _file_last: int = 0
    settled: bool = False  # the last finish(reset_done=True) did the between-runs step too

    def prepare(self, memory: int, procs: int, into: bool = False) -> RunCgroup:
        """into: the agent will start the run in its cgroup (clone3
        CLONE_INTO_CGROUP); the backend hands over a directory, if it can."""
        return self.backend.prepare(self, memory, procs, into)

    def finish(self, run: RunCgroup, reset_done: bool = False) -> MemoryUse:
        """Memory of the run that just ended.  reset_done: the box's work
        areas are emptied already, so the between-runs step can reuse this
        read of the counters; `settled` says whether it was done (False: it
        needs more, e.g. v1's force_empty, left to between_runs())."""
        return self.backend.finish(self, run, reset_done)

    def between_runs(self) -> None:
        self.backend.between_runs(self)

    async def remove(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
        await self.backend.remove(self)


class Backend:
    version: int
    # Runs are started in their cgroup by clone3(CLONE_INTO_CGROUP) (v2);
    # the agent falls back to a write where the kernel lacks it.
    clone_into: bool = False
    root: Path  # instance root (v2) / instance path below each controller (v1)

    def create_box(self, name: str) -> BoxCgroup:
        raise NotImplementedError

    def prepare(self, box: BoxCgroup, memory: int, procs: int, into: bool = False) -> RunCgroup:
        raise NotImplementedError

    def finish(self, box: BoxCgroup, run: RunCgroup, reset_done: bool = False) -> MemoryUse:
        raise NotImplementedError

    def between_runs(self, box: BoxCgroup) -> None:
        pass

    def groups(self) -> list[Path]:
        """Every cgroup directory of this instance, deepest first."""
        raise NotImplementedError

    def kill_all(self, path: Path) -> None:
        raise NotImplementedError

    async def remove(self, box: BoxCgroup) -> None:
        # Deepest first, children included: a run leaf whose agent died mid-run
        # was never finished, and would keep its box group busy (EBUSY).
        for top in box.dirs.values():
            for dp, _, _ in os.walk(top, topdown=False):
                await remove_dir(self, Path(dp))

    def sweep(self) -> int:
        """Remove what an earlier (crashed) instance left: kill, then rmdir."""
        n = 0
        for path in self.groups():
            try:
                self.kill_all(path)
                rmdir_retry_sync(path)
                n += 1
            except OSError as e:
                log.warning("sweep: cannot remove %s: %s", path, e)
        return n


def procs(path: Path) -> list[int]:
    try:
        return [int(x) for x in read(path / "cgroup.procs").split()]
    except FileNotFoundError:
        return []


def kill_listed(path: Path) -> None:
    # v1 has no cgroup.kill: kill what is listed until nothing is.  A task
    # forking meanwhile shows up in the next listing; the pids limit bounds it.
    for _ in range(100):
        pids = procs(path)
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def rmdir_retry_sync(path: Path, attempts: int = 50) -> None:
    for i in range(attempts):
        try:
            path.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError as e:
            # EBUSY: the kernel still holds the group for a moment after the
            # last task exits.
            if e.errno != errno.EBUSY or i == attempts - 1:
                raise
            time.sleep(0.01 * (i + 1))


async def remove_dir(backend: Backend, path: Path, attempts: int = 50) -> None:
    for i in range(attempts):
        try:
            path.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError as e:
            if e.errno != errno.EBUSY or i == attempts - 1:
                log.error("cannot remove cgroup %s: %s", path, e)
                raise CgroupError(f"cannot remove cgroup {path}: {e}") from e
            backend.kill_all(path)
            await asyncio.sleep(0.01 * (i + 1))
