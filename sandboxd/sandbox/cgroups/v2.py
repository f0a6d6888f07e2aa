"""Cgroup v2: one group per box, a leaf per run below it (memory.peak cannot
be reset before Linux 6.12; mkdir/rmdir are cheap).  Where the instance's
groups may live (delegated by systemd, a container's namespace root, or the
host root) is decided here."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from sandboxd.sandbox.cgroups.base import (
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
from sandboxd.sandbox.memstat import MemoryUse, keyed, measured, v2_events, v2_file_bytes

V2_CONTROLLERS = ("memory", "pids", "cpu")


class V2(Backend):
    version = 2
    clone_into = True  # benchmarks/cgroup_v2.py turns it off for the old path

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

    def create_box(self, name: str) -> BoxCgroup:
        box = BoxCgroup(self, name)
        d = self.root / name
        d.mkdir(exist_ok=True)
        _enable(d, V2_CONTROLLERS)
        box.dirs["box"] = d
        return box

    def prepare(self, box: BoxCgroup, memory: int, procs: int, into: bool = False) -> RunCgroup:
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

    def finish(self, box: BoxCgroup, run: RunCgroup, reset_done: bool = False) -> MemoryUse:
        assert run.path is not None
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
