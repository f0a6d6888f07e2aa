"""Cgroup v1: one group per controller (memory, pids, cpuacct) per box, reused
across runs; peak and CPU reset per run, leftover kernel memory dropped when
it matters (see the package docstring)."""

from __future__ import annotations

import errno
import logging
import os
from pathlib import Path

from sandboxd.sandbox.cgroups.base import (
    DROP_LEFTOVER_ABOVE,
    Backend,
    BoxCgroup,
    RunCgroup,
    kill_listed,
    read,
    write,
)
from sandboxd.sandbox.memstat import MemoryUse, file_at_peak, keyed, measured, v1_file_bytes

log = logging.getLogger(__name__)

V1_CONTROLLERS = ("memory", "pids", "cpuacct")


class V1(Backend):
    version = 1
    # The file a run's child writes "0" to, joining each group itself between
    # clone and exec.  `tasks` moves the calling thread only, which for a
    # single-threaded vfork child is the whole process, and the kernel then
    # leaves the host-wide cgroup_threadgroup_rwsem alone (a move of the
    # writer's own single thread needs no thread-group stability:
    # cgroup_procs_write_start).  `cgroup.procs` takes it for write, so each
    # join waited for every fork, exec and exit in flight on the host and held
    # off new ones meanwhile.  Kernels without that single-thread case take it
    # either way: no gain there, no harm.  An instance attribute may name
    # cgroup.procs again (benchmarks/cgroup_v2.py).
    join_file = "tasks"

    def __init__(self, instance: str, mounts: dict[str, Path]) -> None:
        self.mounts = mounts
        self.base = {c: mounts[c] / "sandboxd" / instance for c in V1_CONTROLLERS}
        self.root = self.base["memory"]
        self.memsw = (mounts["memory"] / "memory.memsw.limit_in_bytes").exists()

    def setup(self) -> None:
        for path in self.base.values():
            path.mkdir(parents=True, exist_ok=True)

    def create_box(self, name: str) -> BoxCgroup:
        box = BoxCgroup(self, name)
        for c, base in self.base.items():
            d = base / name
            d.mkdir(exist_ok=True)
            box.dirs[c] = d
        mem = box.dirs["memory"]
        write(mem / "memory.swappiness", "0")
        # Kill on OOM (the default), never pause the group.
        write(mem / "memory.oom_control", "0")
        return box

    def _set_memory(self, mem: Path, limit: int, current: int) -> bool:
        """False when the TCP buffer limit could not follow (retried next run)."""
        files = ["memory.limit_in_bytes"]
        if self.memsw:
            # memsw must stay >= the plain limit: raise it first, lower it last.
            files = (
                ["memory.memsw.limit_in_bytes", *files] if limit > current else [*files, "memory.memsw.limit_in_bytes"]
            )
        for f in files:
            write(mem / f, str(limit))
        # v1 does not charge socket buffers to memory.limit_in_bytes: TCP over lo
        # held 269 MiB (UDP 1 GiB) under a 16 MiB limit.  The tcp counter is
        # separate, so a run may hold up to twice its limit, but bounded.
        try:
            write(mem / "memory.kmem.tcp.limit_in_bytes", str(limit))
        except OSError as e:
            # EBUSY: lowering it while sockets still hold buffers (none should, after
            # the run's processes are gone); the earlier, higher bound stays.
            if e.errno != errno.EBUSY:
                raise
            log.warning("%s: memory.kmem.tcp.limit_in_bytes kept: %s", mem, e)
            return False
        return True

    def prepare(self, box: BoxCgroup, memory: int, procs: int, into: bool = False) -> RunCgroup:
        mem, pids = box.dirs["memory"], box.dirs["pids"]
        cur_mem, cur_procs = box._limits
        set_mem = memory
        if memory != cur_mem and not self._set_memory(mem, memory, cur_mem or (1 << 62)):
            set_mem = 0  # (unknown: the next run writes every limit again)
        if procs != cur_procs:
            write(pids / "pids.max", str(procs))
        box._limits = (set_mem, procs)
        fds = box._fds
        if not fds:
            # Opened once per box (v1 groups live as long as the box): the
            # per-run path stays a write and a read, no path lookups.
            fds["peak"] = os.open(mem / "memory.max_usage_in_bytes", os.O_RDWR | os.O_CLOEXEC)
            fds["oom"] = os.open(mem / "memory.oom_control", os.O_RDONLY | os.O_CLOEXEC)
            fds["usage"] = os.open(mem / "memory.usage_in_bytes", os.O_RDONLY | os.O_CLOEXEC)
            fds["numa"] = os.open(mem / "memory.numa_stat", os.O_RDONLY | os.O_CLOEXEC)
            fds["cpu"] = os.open(box.dirs["cpuacct"] / "cpuacct.usage", os.O_RDONLY | os.O_CLOEXEC)
            for c, d in box.dirs.items():
                fds[f"join-{c}"] = os.open(d / self.join_file, os.O_WRONLY | os.O_CLOEXEC)
        os.pwrite(fds["peak"], b"0", 0)  # (to the usage now)
        # The file pages in that usage, at most (memstat.file_at_peak); the
        # kernel memory left (the residue) is not file.
        usage = int(os.pread(fds["usage"], 64, 0))
        file_before = min(box._file_last, max(0, usage - box._residue))
        oom = box._oom_kills
        if oom is None:
            oom = keyed(os.pread(fds["oom"], 256, 0).decode(), "oom_kill")
        join = [fds[f"join-{c}"] for c in box.dirs]
        return RunCgroup(join, fds["cpu"], memory, oom_before=oom, owned=False, file_before=file_before)

    def finish(self, box: BoxCgroup, run: RunCgroup, reset_done: bool = False) -> MemoryUse:
        fds = box._fds
        file_bytes = box._file_last = v1_file_bytes(fds["numa"])
        raw = int(os.pread(fds["peak"], 64, 0))
        peak = measured(raw, file_at_peak(raw, file_bytes, run.file_before, run.memory_limit) + box._residue)
        # No v1 count of refused charges (failcnt counts reclaim): OOM kills (oom_kill_disable=0).
        kills = keyed(os.pread(fds["oom"], 256, 0).decode(), "oom_kill")
        box._oom_kills = kills
        box.settled = False
        box._file_bytes = None if reset_done else file_bytes
        if reset_done:
            # The between-runs check on the same stat read: nothing left to
            # drop is the common case, then the box needs nothing more.
            left = self._left(box, file_bytes)
            if left <= box._residue + DROP_LEFTOVER_ABOVE:
                box._residue = min(box._residue, left)
                box.settled = True
        return MemoryUse(peak, kills > run.oom_before, kills > run.oom_before)

    @staticmethod
    def _left(box: BoxCgroup, file_bytes: int | None = None) -> int:
        """Non-file memory still charged to the box's group (0 below the threshold)."""
        fds = box._fds
        usage = int(os.pread(fds["usage"], 64, 0))
        if usage <= DROP_LEFTOVER_ABOVE:
            return 0
        return max(0, usage - (v1_file_bytes(fds["numa"]) if file_bytes is None else file_bytes))  # stat read: ~5 us

    def between_runs(self, box: BoxCgroup) -> None:
        # Page cache stays (module docstring); kernel memory left would count
        # in the next run's figure.  Below the threshold (a few hundred KiB
        # after a typical run, mostly dentries the next run reuses)
        # force_empty costs 0.2-0.6 ms of the daemon's CPU for nothing.
        mem, fds = box.dirs["memory"], box._fds
        if not fds:
            return  # no run yet
        # The file bytes the run's finish() read, not a second numa_stat read
        # (issue 18): since then nothing has charged file pages to the group
        # (no process is in it; the agent's reset runs outside it, and tmpfs
        # pages are not file LRU), so they can only have shrunk, by reclaim
        # in that millisecond, and `left` come out lower by what was
        # reclaimed: a force_empty due might wait for a later run (the
        # threshold's own slack, plus that).  A lower residue is taken from a
        # fresh read only (it would raise the next runs' figures).
        file_bytes, box._file_bytes = box._file_bytes, None
        try:
            left = self._left(box, file_bytes)
            if file_bytes is not None and left < box._residue:
                left = self._left(box)
            if left > box._residue + DROP_LEFTOVER_ABOVE:
                write(mem / "memory.force_empty", "0")
                # It leaves some (dentries its shrinker pass did not reach: ~4
                # MB of 40), not the next runs' doing, so not in their figure;
                # kept until it shrinks, not dropped again after every run.
                box._file_last = v1_file_bytes(fds["numa"])
                box._residue = max(0, int(os.pread(fds["usage"], 64, 0)) - box._file_last)
            else:
                box._residue = min(box._residue, left)
        except OSError as e:
            log.warning("force_empty %s: %s", mem, e)

    def groups(self) -> list[Path]:
        out: list[Path] = []
        for base in self.base.values():
            if base.exists():
                out += [Path(dp) for dp, _, _ in os.walk(base, topdown=False) if Path(dp) != base]
        return out

    def kill_all(self, path: Path) -> None:
        kill_listed(path)


def mounts() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for line in read(Path("/proc/self/mountinfo")).splitlines():
        pre, _, post = line.partition(" - ")
        fields = post.split()
        if len(fields) >= 3 and fields[0] == "cgroup":
            opts = set(fields[2].split(","))
            for c in V1_CONTROLLERS:
                if c in opts and c not in found:
                    found[c] = Path(pre.split()[4])
    return found
