"""Cgroup v2: one group per box.  From Linux 6.12, where a write to an open
memory.peak resets what that fd reads, the box's group serves every run, as
on v1: its limits are written when they change, its counters read through
fds opened once, each run's figures taken against a baseline.  Before 6.12
memory.peak cannot be reset, so each run gets a fresh leaf below the box
(mkdir, limits, rmdir).  Where the instance's groups may live (delegated by
systemd, a container's namespace root, or the host root) is decided here."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
from pathlib import Path

from sandboxd.sandbox.cgroups.base import (
    DROP_LEFTOVER_ABOVE,
    Backend,
    BoxCgroup,
    CgroupError,
    RunCgroup,
    kill_listed,
    procs,
    read,
    rmdir_retry_sync,
    write,
)
from sandboxd.sandbox.memstat import (
    MemoryUse,
    file_at_peak,
    keyed,
    measured,
    v2_event_counts,
    v2_events,
    v2_file_bytes,
)

log = logging.getLogger(__name__)

V2_CONTROLLERS = ("memory", "pids", "cpu")


class V2(Backend):
    version = 2
    clone_into = True  # benchmarks/cgroup_v2.py turns it off for the old path
    # The box's group serves its runs where memory.peak can be reset (setup()
    # probes the kernel); False: a leaf per run (benchmarks/cgroup_v2.py sets it).
    reuse = True
    _probed = False

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
                for pid in procs(self.delegated):
                    with contextlib.suppress(ProcessLookupError):
                        write(leaf / "cgroup.procs", str(pid))
            else:
                _enable(self.mount, V2_CONTROLLERS)  # a host without systemd may have none enabled
                self.parent.mkdir(exist_ok=True)
            _enable(self.parent, V2_CONTROLLERS)
            self.root.mkdir(exist_ok=True)
            _enable(self.root, V2_CONTROLLERS)
        except OSError as e:
            raise CgroupError(f"cannot set up cgroup {self.root}: {e}") from e
        if not self._probed:  # once: a heal's setup() again must not switch the mode under live boxes
            self.reuse = self.reuse and _peak_resettable(self.root)
            self._probed = True

    def create_box(self, name: str) -> BoxCgroup:
        box = BoxCgroup(self, name)
        d = self.root / name
        d.mkdir(exist_ok=True)
        box.dirs["box"] = d
        if not self.reuse:
            _enable(d, V2_CONTROLLERS)  # (its run leaves get the controllers)
            return box
        try:
            self._open_reused(box)
        except BaseException:
            for fd in box._fds.values():
                os.close(fd)
            box._fds.clear()
            with contextlib.suppress(OSError):
                d.rmdir()
            raise
        return box

    def _open_reused(self, box: BoxCgroup) -> None:
        d = box.dirs["box"]
        write(d / "memory.swap.max", "0")
        write(d / "memory.oom.group", "1")
        # Opened once: a run's path is writes and reads on these, no lookups.
        flags = {
            "dir": os.O_RDONLY | os.O_DIRECTORY,
            "cgroup.procs": os.O_WRONLY,
            "cpu.stat": os.O_RDONLY,
            "memory.peak": os.O_RDWR,
            "memory.current": os.O_RDONLY,
            "memory.stat": os.O_RDONLY,
            "memory.events": os.O_RDONLY,
        }
        for f, fl in flags.items():
            box._fds[f] = os.open(d if f == "dir" else d / f, fl | os.O_CLOEXEC)
        box._limits = (0, 0)
        box._file_last = 0
        box._oom_kills, box._ooms = v2_event_counts(_pread(box._fds["memory.events"]))

    def prepare(self, box: BoxCgroup, memory: int, procs: int, into: bool = False) -> RunCgroup:
        if self.reuse:
            return self._prepare_reused(box, memory, procs, into)
        box._runs += 1
        leaf = box.dirs["box"] / f"run{box._runs}"
        leaf.mkdir()
        write(leaf / "memory.max", str(memory))
        write(leaf / "memory.swap.max", "0")
        write(leaf / "memory.oom.group", "1")
        write(leaf / "pids.max", str(procs))
        # The leaf's directory: the agent starts the run in it with
        # clone3(CLONE_INTO_CGROUP), no migration (it falls back to writing
        # the directory's cgroup.procs where the kernel lacks that).
        if into:
            join = [os.open(leaf, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)]
        else:
            join = [os.open(leaf / "cgroup.procs", os.O_WRONLY | os.O_CLOEXEC)]
        cpu = os.open(leaf / "cpu.stat", os.O_RDONLY | os.O_CLOEXEC)
        return RunCgroup(join, cpu, memory, path=leaf, into=into)

    def _prepare_reused(self, box: BoxCgroup, memory: int, procs: int, into: bool) -> RunCgroup:
        d, fds = box.dirs["box"], box._fds
        if box._limits != (memory, procs):
            box._limits = (0, 0)  # (unknown until both are written: a failed write has them written next run)
            write(d / "memory.max", str(memory))
            write(d / "pids.max", str(procs))
            box._limits = (memory, procs)
            # Lowering memory.max below the group's usage (page cache earlier
            # runs left) reclaims, and what it cannot reclaim is an `oom`
            # event, with no process to kill: not this run's doing.
            box._oom_kills, box._ooms = v2_event_counts(_pread(fds["memory.events"]))
        # From here the fd's peak is the group's usage now (page cache earlier
        # runs left, and under DROP_LEFTOVER_ABOVE of their kernel memory) plus
        # what this run adds.
        os.pwrite(fds["memory.peak"], b"reset", 0)
        # The file pages in that usage, at most (memstat.file_at_peak).
        file_before = min(box._file_last, int(os.pread(fds["memory.current"], 64, 0)))
        assert box._oom_kills is not None
        join = [fds["dir"] if into else fds["cgroup.procs"]]
        return RunCgroup(
            join,
            fds["cpu.stat"],
            memory,
            oom_before=box._oom_kills,
            ooms_before=box._ooms,
            owned=False,
            into=into,
            file_before=file_before,
        )

    def _finish_reused(self, box: BoxCgroup, run: RunCgroup, reset_done: bool) -> MemoryUse:
        fds = box._fds
        file_bytes = box._file_last = v2_file_bytes(_pread(fds["memory.stat"]))
        raw = int(os.pread(fds["memory.peak"], 64, 0))
        peak = measured(raw, file_at_peak(raw, file_bytes, run.file_before, run.memory_limit))
        events = _pread(fds["memory.events"])
        oom_kill, oom = v2_events(events, (run.oom_before, run.ooms_before))
        # No process is in the group between runs: these are the next run's baseline.
        box._oom_kills, box._ooms = v2_event_counts(events)
        # (as v1: the between-runs check on this read of the counters, once the box is reset)
        box.settled = reset_done and _left(box, file_bytes) <= DROP_LEFTOVER_ABOVE
        return MemoryUse(peak, oom_kill, oom)

    def between_runs(self, box: BoxCgroup) -> None:
        """Kernel memory the runs left (dentries, mostly) counts in the next
        run's figure and limit; above the threshold the box gets a fresh group.
        Removing the old one moves its charges to the parent: the page cache
        stays cached (memory.reclaim would drop it, and every Java or Node run
        after it would read its runtime from disk again)."""
        if not self.reuse or not box._fds or _left(box) <= DROP_LEFTOVER_ABOVE:
            return
        d = box.dirs["box"]
        try:
            # (open fds do not keep a cgroup; no retry: the agent has reaped
            # every process of the runs, and this is on the event loop)
            d.rmdir()
        except OSError as e:
            log.warning("cannot renew cgroup %s (kept): %s", d, e)
            return
        old = list(box._fds.values())
        box._fds.clear()
        for fd in old:
            os.close(fd)
        # A failure from here raises: the box is broken (Box.reset's caller retires it).
        d.mkdir()
        self._open_reused(box)

    def finish(self, box: BoxCgroup, run: RunCgroup, reset_done: bool = False) -> MemoryUse:
        if run.path is None:
            return self._finish_reused(box, run, reset_done)
        box.settled = reset_done  # no between-runs step: the next run gets a new leaf
        stat = read(run.path / "memory.stat")
        try:
            raw = int(read(run.path / "memory.peak"))
        except FileNotFoundError:  # before Linux 5.19: no peak, what is left at the end
            raw = keyed(stat, "anon") + keyed(stat, "file")
        # The leaf is this run's alone: its counters need no baseline.
        oom_kill, oom = v2_events(read(run.path / "memory.events"))
        try:
            run.path.rmdir()
        except OSError:
            rmdir_retry_sync(run.path)
        return MemoryUse(measured(raw, v2_file_bytes(stat)), oom_kill, oom)

    def groups(self) -> list[Path]:
        if not self.root.exists():
            return []
        return [Path(dp) for dp, _, _ in os.walk(self.root, topdown=False) if Path(dp) != self.root]

    def kill_all(self, path: Path) -> None:
        try:
            write(path / "cgroup.kill", "1")
        except FileNotFoundError:  # before Linux 5.14
            kill_listed(path)


def _pread(fd: int) -> str:
    return os.pread(fd, 16384, 0).decode()  # (memory.stat: ~1.5 KB on 6.12)


def _left(box: BoxCgroup, file_bytes: int | None = None) -> int:
    """Non-file memory still charged to a reused box group."""
    fds = box._fds
    if file_bytes is None:
        file_bytes = v2_file_bytes(_pread(fds["memory.stat"]))
    return max(0, int(os.pread(fds["memory.current"], 64, 0)) - file_bytes)


def _peak_resettable(parent: Path) -> bool:
    """Linux 6.12+: a write to an open memory.peak resets it for that fd.
    Before, the file is read-only (EACCES on open for writing; before 5.19 it
    does not exist)."""
    probe = parent / "peak-probe"
    try:
        probe.mkdir(exist_ok=True)
        fd = os.open(probe / "memory.peak", os.O_RDWR | os.O_CLOEXEC)
        try:
            os.write(fd, b"reset")
        finally:
            os.close(fd)
        return True
    except OSError as e:
        if e.errno not in (errno.EACCES, errno.ENOENT, errno.EINVAL, errno.EPERM):
            log.warning("cannot probe %s/memory.peak (a leaf per run): %s", probe, e)
        return False
    finally:
        with contextlib.suppress(OSError):
            probe.rmdir()


def _enable(path: Path, controllers: tuple[str, ...]) -> None:
    have = set(read(path / "cgroup.subtree_control").split())
    for c in controllers:
        if c not in have:
            # One at a time: a single refused controller must not hide the rest.
            write(path / "cgroup.subtree_control", f"+{c}")


DELEGATED_ENV = "SANDBOXD_CGROUP_DELEGATED"


def _require(path: Path, controllers: tuple[str, ...]) -> None:
    have = set(read(path / "cgroup.controllers").split())
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
    for line in read(Path("/proc/self/cgroup")).splitlines():
        if line.startswith("0::"):
            return line[3:]
    return "/"
