"""Cgroups v1 and v2 behind one small interface.

A box owns one cgroup (one per controller on v1).  Each run:
  prepare(limits) -> RunCgroup   # limits set, accounting reset, fds to hand to the agent
  finish(run)     -> MemoryUse   # read after every process of the run is gone
The agent's child joins the run cgroup by writing "0" to `join_fds` (files
opened here, before the box existed), and the agent polls `cpu_fd` to enforce
the CPU total across all processes of a run.

Reported memory never counts clean page cache (sandboxd/sandbox/memstat.py).  v1: the
box cgroup is reused; peak and CPU are reset per run.  Page cache a run pulled
in stays charged to the box (the kernel reclaims it first when a later run
needs room; dropping it made every Java or Node run re-read its runtime from
disk); leftover kernel memory is dropped (force_empty) when there is enough
of it to matter.  v2: a leaf per run under the box (memory.peak cannot be
reset before Linux 6.12); mkdir/rmdir are cheap.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import signal
from dataclasses import dataclass, field
from pathlib import Path

from sandboxd.sandbox.memstat import MemoryUse, keyed, measured, v1_file_bytes, v2_events, v2_file_bytes

log = logging.getLogger(__name__)

CGROUP_ROOT = Path("/sys/fs/cgroup")
V1_CONTROLLERS = ("memory", "pids", "cpuacct")
V2_CONTROLLERS = ("memory", "pids", "cpu")


FORCE_EMPTY_ABOVE = 1 << 20  # v1: bytes of non-file memory left charged after a run before it is reclaimed


class CgroupError(RuntimeError):
    pass


def _write(path: Path, value: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def _read(path: Path) -> str:
    with open(path) as f:
        return f.read()


@dataclass
class RunCgroup:
    join_fds: list[int]
    cpu_fd: int
    memory_limit: int
    path: Path | None = None  # v2 per-run leaf
    oom_before: int = 0
    owned: bool = True  # False: the fds belong to the box (v1 keeps them open across runs)

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

    def prepare(self, memory: int, procs: int) -> RunCgroup:
        return self.backend.prepare(self, memory, procs)

    def finish(self, run: RunCgroup) -> MemoryUse:
        """Memory of the run that just ended."""
        return self.backend.finish(self, run)

    def between_runs(self) -> None:
        self.backend.between_runs(self)

    async def remove(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
        await self.backend.remove(self)


class Backend:
    version: int
    root: Path  # instance root (v2) / instance path below each controller (v1)

    def create_box(self, name: str) -> BoxCgroup:
        raise NotImplementedError

    def prepare(self, box: BoxCgroup, memory: int, procs: int) -> RunCgroup:
        raise NotImplementedError

    def finish(self, box: BoxCgroup, run: RunCgroup) -> MemoryUse:
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
                _rmdir_retry_sync(path)
                n += 1
            except OSError as e:
                log.warning("sweep: cannot remove %s: %s", path, e)
        return n


def _procs(path: Path) -> list[int]:
    try:
        return [int(x) for x in _read(path / "cgroup.procs").split()]
    except FileNotFoundError:
        return []


def _kill_listed(path: Path) -> None:
    # v1 has no cgroup.kill: kill what is listed until nothing is.  A task
    # forking meanwhile shows up in the next listing; the pids limit bounds it.
    for _ in range(100):
        pids = _procs(path)
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _rmdir_retry_sync(path: Path, attempts: int = 50) -> None:
    import time

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


class V1(Backend):
    version = 1

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
        _write(mem / "memory.swappiness", "0")
        # Kill on OOM (the default), never pause the group.
        _write(mem / "memory.oom_control", "0")
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
            _write(mem / f, str(limit))
        # v1 does not charge socket buffers to memory.limit_in_bytes: TCP over lo
        # held 269 MiB (UDP 1 GiB) under a 16 MiB limit.  The tcp counter is
        # separate, so a run may hold up to twice its limit, but bounded.
        try:
            _write(mem / "memory.kmem.tcp.limit_in_bytes", str(limit))
        except OSError as e:
            # EBUSY: lowering it while sockets still hold buffers (none should, after
            # the run's processes are gone); the earlier, higher bound stays.
            if e.errno != errno.EBUSY:
                raise
            log.warning("%s: memory.kmem.tcp.limit_in_bytes kept: %s", mem, e)
            return False
        return True

    def prepare(self, box: BoxCgroup, memory: int, procs: int) -> RunCgroup:
        mem, pids = box.dirs["memory"], box.dirs["pids"]
        cur_mem, cur_procs = box._limits
        set_mem = memory
        if memory != cur_mem and not self._set_memory(mem, memory, cur_mem or (1 << 62)):
            set_mem = 0  # (unknown: the next run writes every limit again)
        if procs != cur_procs:
            _write(pids / "pids.max", str(procs))
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
                fds[f"join-{c}"] = os.open(d / "cgroup.procs", os.O_WRONLY | os.O_CLOEXEC)
        os.pwrite(fds["peak"], b"0", 0)
        oom = keyed(os.pread(fds["oom"], 256, 0).decode(), "oom_kill")
        join = [fds[f"join-{c}"] for c in box.dirs]
        return RunCgroup(join, fds["cpu"], memory, oom_before=oom, owned=False)

    def finish(self, box: BoxCgroup, run: RunCgroup) -> MemoryUse:
        fds = box._fds
        peak = measured(int(os.pread(fds["peak"], 64, 0)), v1_file_bytes(fds["numa"]) + box._residue)
        # No v1 count of refused charges (failcnt counts reclaim): OOM kills (oom_kill_disable=0).
        oom = keyed(os.pread(fds["oom"], 256, 0).decode(), "oom_kill") > run.oom_before
        return MemoryUse(peak, oom, oom)

    def between_runs(self, box: BoxCgroup) -> None:
        # Page cache stays (module docstring); kernel memory left would count
        # in the next run's figure.  Below the threshold (a few hundred KiB
        # after a typical run, mostly dentries the next run reuses)
        # force_empty costs 0.2-0.6 ms of the daemon's CPU for nothing.
        mem, fds = box.dirs["memory"], box._fds
        if not fds:
            return  # no run yet
        try:
            usage = int(os.pread(fds["usage"], 64, 0))
            left = usage - v1_file_bytes(fds["numa"]) if usage > FORCE_EMPTY_ABOVE else 0  # stat read: ~10 us
            if left > box._residue + FORCE_EMPTY_ABOVE:
                _write(mem / "memory.force_empty", "0")
                # It leaves some (dentries its shrinker pass did not reach: ~4
                # MB of 40), not the next runs' doing, so not in their figure;
                # kept until it shrinks, not dropped again after every run.
                box._residue = max(0, int(os.pread(fds["usage"], 64, 0)) - v1_file_bytes(fds["numa"]))
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
        _kill_listed(path)


class V2(Backend):
    version = 2

    def __init__(self, instance: str, mount: Path) -> None:
        self.mount = mount
        own = _own_v2_cgroup().removesuffix("/daemon") or "/"  # a restart finds itself in the leaf
        # Under systemd (Delegate=yes) we own our unit's cgroup, and in a
        # container the root of our cgroup namespace: neither may hold
        # processes next to child groups, so the daemon moves into a leaf and
        # the boxes are its siblings.  From a shell at the host's root cgroup
        # (exempt from that rule): a subtree of our own.
        host_root = own == "/" and _is_host_root(mount)
        self.delegated = None if host_root else mount / own.lstrip("/")
        # A cgroup neither delegated nor a namespace root is someone else's
        # (a login session's scope, a unit without Delegate=): setup() refuses it.
        self.foreign = not host_root and own != "/" and not _delegated(mount / own.lstrip("/"))
        parent = self.delegated if self.delegated else mount / "sandboxd"
        self.parent = parent
        self.root = parent / instance

    def setup(self) -> None:
        # Refuse before touching anything: a refused setup leaves the hierarchy as it was.
        if self.foreign:
            raise CgroupError(
                f"cgroup {self.parent.relative_to(self.mount)} is not delegated to sandboxd: run it in a unit "
                "with Delegate=yes (one-off: systemd-run --pipe --wait -p Delegate=yes ...), "
                f"or set {DELEGATED_ENV}=1 if the cgroup was handed over another way"
            )
        _require(self.delegated or self.mount, V2_CONTROLLERS)
        try:
            if self.delegated is not None:
                leaf = self.delegated / "daemon"
                leaf.mkdir(exist_ok=True)
                for pid in _procs(self.delegated):
                    with contextlib.suppress(ProcessLookupError):
                        _write(leaf / "cgroup.procs", str(pid))
            else:
                _enable(self.mount, V2_CONTROLLERS)  # a host without systemd may have none enabled
                self.parent.mkdir(exist_ok=True)
            _enable(self.parent, V2_CONTROLLERS)
            self.root.mkdir(exist_ok=True)
            _enable(self.root, V2_CONTROLLERS)
        except OSError as e:
            raise CgroupError(f"cannot set up cgroup {self.root}: {e}") from e

    def create_box(self, name: str) -> BoxCgroup:
        box = BoxCgroup(self, name)
        d = self.root / name
        d.mkdir(exist_ok=True)
        _enable(d, V2_CONTROLLERS)
        box.dirs["box"] = d
        return box

    def prepare(self, box: BoxCgroup, memory: int, procs: int) -> RunCgroup:
        box._runs += 1
        leaf = box.dirs["box"] / f"run{box._runs}"
        leaf.mkdir()
        _write(leaf / "memory.max", str(memory))
        _write(leaf / "memory.swap.max", "0")
        _write(leaf / "memory.oom.group", "1")
        _write(leaf / "pids.max", str(procs))
        join = [os.open(leaf / "cgroup.procs", os.O_WRONLY | os.O_CLOEXEC)]
        cpu = os.open(leaf / "cpu.stat", os.O_RDONLY | os.O_CLOEXEC)
        return RunCgroup(join, cpu, memory, path=leaf)

    def finish(self, box: BoxCgroup, run: RunCgroup) -> MemoryUse:
        assert run.path is not None
        stat = _read(run.path / "memory.stat")
        try:
            raw = int(_read(run.path / "memory.peak"))
        except FileNotFoundError:  # before Linux 5.19: no peak, what is left at the end
            raw = keyed(stat, "anon") + keyed(stat, "file")
        # The leaf is this run's alone: its counters need no baseline.
        oom_kill, oom = v2_events(_read(run.path / "memory.events"))
        try:
            run.path.rmdir()
        except OSError:
            _rmdir_retry_sync(run.path)
        return MemoryUse(measured(raw, v2_file_bytes(stat)), oom_kill, oom)

    def groups(self) -> list[Path]:
        if not self.root.exists():
            return []
        return [Path(dp) for dp, _, _ in os.walk(self.root, topdown=False) if Path(dp) != self.root]

    def kill_all(self, path: Path) -> None:
        try:
            _write(path / "cgroup.kill", "1")
        except FileNotFoundError:  # before Linux 5.14
            _kill_listed(path)


def _enable(path: Path, controllers: tuple[str, ...]) -> None:
    have = set(_read(path / "cgroup.subtree_control").split())
    for c in controllers:
        if c not in have:
            # One at a time: a single refused controller must not hide the rest.
            _write(path / "cgroup.subtree_control", f"+{c}")


DELEGATED_ENV = "SANDBOXD_CGROUP_DELEGATED"


def _require(path: Path, controllers: tuple[str, ...]) -> None:
    have = set(_read(path / "cgroup.controllers").split())
    missing = [c for c in controllers if c not in have]
    if missing:
        raise CgroupError(f"cgroup {path} lacks controllers {missing} (delegate them: Delegate=yes)")


def _is_host_root(mount: Path) -> bool:
    """The host's root cgroup has no cgroup.type; the root of a cgroup
    namespace (a container) has one, and the no-internal-process rule."""
    return not (mount / "cgroup.type").exists()


def _delegated(path: Path) -> bool:
    """systemd marks the cgroup of a unit with Delegate= with the xattrs
    trusted.delegate=1 and user.delegate=1 (seen with systemd 252)."""
    if os.environ.get(DELEGATED_ENV) == "1":
        return True
    for name in ("trusted.delegate", "user.delegate"):
        with contextlib.suppress(OSError):
            if os.getxattr(path, name) == b"1":
                return True
    return False


def _own_v2_cgroup() -> str:
    for line in _read(Path("/proc/self/cgroup")).splitlines():
        if line.startswith("0::"):
            return line[3:]
    return "/"


def _v1_mounts() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for line in _read(Path("/proc/self/mountinfo")).splitlines():
        pre, _, post = line.partition(" - ")
        fields = post.split()
        if len(fields) >= 3 and fields[0] == "cgroup":
            opts = set(fields[2].split(","))
            for c in V1_CONTROLLERS:
                if c in opts and c not in found:
                    found[c] = Path(pre.split()[4])
    return found


def detect(instance: str = "default", create: bool = True) -> Backend:
    """Pick the hierarchy at start-up: pure v2 if its controllers are there,
    else v1 controllers (hybrid hosts such as this project's CI)."""
    if not instance.replace("-", "").replace("_", "").isalnum():
        raise CgroupError(f"instance name {instance!r}: use letters, digits, - and _")
    ctl = CGROUP_ROOT / "cgroup.controllers"
    if ctl.exists():
        have = set(_read(ctl).split())
        missing = [c for c in V2_CONTROLLERS if c not in have]
        if missing:
            raise CgroupError(f"cgroup v2 without controllers {missing} (check delegation)")
        v2 = V2(instance, CGROUP_ROOT)
        if create:
            v2.setup()
        return v2
    mounts = _v1_mounts()
    missing = [c for c in V1_CONTROLLERS if c not in mounts]
    if missing:
        raise CgroupError(f"no cgroup v2 controllers and v1 controllers {missing} not mounted")
    v1 = V1(instance, mounts)
    if create:
        v1.setup()
    return v1


def for_instance(backend: Backend, instance: str) -> Backend:
    if isinstance(backend, V1):
        return V1(instance, backend.mounts)
    assert isinstance(backend, V2)
    other = V2.__new__(V2)
    other.mount, other.delegated, other.parent = backend.mount, backend.delegated, backend.parent
    other.foreign = backend.foreign
    other.root = backend.parent / instance
    return other


def remove_instance(backend: Backend) -> None:
    """Sweep an instance and remove its own directories too; then the shared
    `sandboxd` parent if no other instance uses it (rmdir is atomic: it fails
    while a sibling exists, so a concurrent instance is never disturbed)."""
    backend.sweep()
    roots = list(backend.base.values()) if isinstance(backend, V1) else [backend.root]
    for r in roots:
        if r.exists():
            backend.kill_all(r)
            _rmdir_retry_sync(r)
    if isinstance(backend, V2) and backend.delegated is not None:
        return  # the parent is our service's own cgroup: systemd's to remove
    for r in roots:
        with contextlib.suppress(OSError):
            r.parent.rmdir()
