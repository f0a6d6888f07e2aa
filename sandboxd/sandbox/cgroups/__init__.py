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
of it to matter.  v2 from Linux 6.12 the same (memory.peak is reset through
its fd; the box gets a fresh group where v1 would force_empty); before 6.12
a leaf per run under the box, as memory.peak cannot be reset there.

base.py: the shared handles and file operations; v1.py, v2.py: the two
hierarchies; here: picking one at start-up, and removing an instance.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from sandboxd.sandbox.cgroups.base import Backend, BoxCgroup, CgroupError, RunCgroup, read, rmdir_retry_sync
from sandboxd.sandbox.cgroups.v1 import V1, V1_CONTROLLERS
from sandboxd.sandbox.cgroups.v1 import mounts as v1_mounts
from sandboxd.sandbox.cgroups.v2 import DELEGATED_ENV, V2, V2_CONTROLLERS

__all__ = [
    "DELEGATED_ENV",
    "V1",
    "V1_CONTROLLERS",
    "V2",
    "V2_CONTROLLERS",
    "Backend",
    "BoxCgroup",
    "CgroupError",
    "RunCgroup",
    "detect",
    "for_instance",
    "remove_instance",
]

CGROUP_ROOT = Path("/sys/fs/cgroup")


def detect(instance: str = "default", create: bool = True) -> Backend:
    """Pick the hierarchy at start-up: pure v2 if its controllers are there,
    else v1 controllers (hybrid hosts such as this project's CI)."""
    if not instance.replace("-", "").replace("_", "").isalnum():
        raise CgroupError(f"instance name {instance!r}: use letters, digits, - and _")
    ctl = CGROUP_ROOT / "cgroup.controllers"
    if ctl.exists():
        have = set(read(ctl).split())
        missing = [c for c in V2_CONTROLLERS if c not in have]
        if missing:
            raise CgroupError(f"cgroup v2 without controllers {missing} (check delegation)")
        v2 = V2(instance, CGROUP_ROOT)
        if create:
            v2.setup()
        return v2
    mounts = v1_mounts()
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
    other.foreign, other.reuse = backend.foreign, backend.reuse
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
            rmdir_retry_sync(r)
    if isinstance(backend, V2) and backend.delegated is not None:
        return  # the parent is our service's own cgroup: systemd's to remove
    for r in roots:
        with contextlib.suppress(OSError):
            r.parent.rmdir()
