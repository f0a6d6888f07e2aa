"""What dead instances left on the host: finding it, and removing it without
ever touching a live instance.

An instance is alive while its host-wide lock (hostlock) is held.  A start
sweeps every other instance whose lock it can take, holding that lock while
it removes the instance's cgroups: the instance cannot start meanwhile.  A
free lock alone is not enough: processes still in the cgroups (a live daemon
of an older version that kept its locks in a run_dir of its own) keep an
instance alive too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path

from sandboxd.hostlock import HostLock
from sandboxd.sandbox import cgroups

log = logging.getLogger(__name__)

DYING_WAIT = 1.0  # seconds a just-crashed instance's agents get to die (PDEATHSIG) before it counts as live


def instance_dirs(backend: cgroups.Backend) -> list[Path]:
    """The instance's own cgroup directories (one per controller on v1): every box lives below them."""
    return list(backend.base.values()) if isinstance(backend, cgroups.V1) else [backend.root]


def other_instances(backend: cgroups.Backend) -> list[str]:
    """Names of the other instances that have cgroups on this host (under any
    controller on v1: a crash may leave one controller's directory alone)."""
    parents = {d.parent for d in instance_dirs(backend)}
    mine = backend.root.name
    names: set[str] = set()
    for parent in parents:
        with contextlib.suppress(FileNotFoundError):
            names.update(p.name for p in parent.iterdir() if p.is_dir() and p.name not in (mine, "daemon"))
    return sorted(names)


def has_tasks(backend: cgroups.Backend) -> bool:
    """Whether any process is in the instance's cgroups (those of a dead
    instance empty by themselves: its agents die with it, PDEATHSIG)."""
    for d in [*backend.groups(), *instance_dirs(backend)]:
        with contextlib.suppress(FileNotFoundError):
            if (d / "cgroup.procs").read_text().strip():
                return True
    return False


async def dead_instances(backend: cgroups.Backend) -> None:
    """Remove the cgroups of instances that died; never those of a live one."""
    for other in other_instances(backend):
        lock = HostLock.try_take(other)  # held while sweeping: it cannot start meanwhile
        if lock is None:
            continue  # alive
        try:
            await _sweep(cgroups.for_instance(backend, other))
        except OSError as e:
            log.warning("cannot remove leftovers of instance %r: %s", other, e)
        finally:
            lock.release()


async def _sweep(dead: cgroups.Backend) -> None:
    name = dead.root.name
    for _ in range(int(DYING_WAIT / 0.05)):
        if not has_tasks(dead):
            cgroups.remove_instance(dead)
            log.warning("removed leftovers of dead instance %r", name)
            return
        await asyncio.sleep(0.05)
    log.warning(
        "instance %r holds no lock, yet processes run in its cgroups (a live sandboxd of an older version "
        "with a run_dir of its own?): left alone",
        name,
    )
