"""This process's claim on an instance name: the host-wide liveness lock, a
leased range of box uids, and removing what crashed instances left.

An instance is alive while its lock (sandboxd.hostlock) is held; the kernel
releases it, and the uid lease, when the process dies.  Claiming a name
first removes the cgroups a crashed holder of the same name left, then those
of other dead instances (sandboxd.engine.sweep).
"""

from __future__ import annotations

import asyncio
import logging
import time

from sandboxd import hostlock
from sandboxd.engine import sweep
from sandboxd.hostlock import HostLock
from sandboxd.sandbox import cgroups

log = logging.getLogger(__name__)

# Box uids live far above any real account (Debian's dynamic users end at
# 60000, subuid ranges usually start at 100000 and take 65536 per user).
UID_FLOOR = 2_000_000
UID_SLOTS = 64
INSTANCE_LOCK_WAIT = 3.0  # seconds: longer than another instance's crash sweep of this name


class InstanceBusy(RuntimeError):
    pass


class Instance:
    """Held from claim() to close(): while it is, no other process runs `name`
    or uses its box uids."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.backend: cgroups.Backend | None = None
        self._lock: HostLock | None = None
        self._uid_lock: HostLock | None = None

    async def claim(self) -> cgroups.Backend:
        """Take the name, set up its cgroups and sweep what crashed instances left."""
        self._lock = await _take(self.name)
        if self._lock is None:
            raise InstanceBusy(f"sandboxd instance {self.name!r} is already running on this host")
        self.backend = backend = cgroups.detect(self.name)
        swept = backend.sweep()
        if swept:
            log.warning("removed %d cgroups left by a crashed instance %r", swept, self.name)
        await sweep.dead_instances(backend)
        hostlock.remove_stale()
        return backend

    def lease_uids(self, count: int) -> int:
        """The first free slot of UID_SLOTS ranges of `count` uids above
        UID_FLOOR; held until close()."""
        for slot in range(UID_SLOTS):
            lock = HostLock.try_take(f"uids-{slot}")
            if lock is not None:
                self._uid_lock = lock
                return UID_FLOOR + slot * count
        raise InstanceBusy(f"all {UID_SLOTS} box uid ranges are in use on this host")

    def close(self) -> None:
        """Remove the instance's cgroups (only if the name was ours), then give
        the uid range back, then the name."""
        if self.backend is not None and self._lock is not None:
            try:
                cgroups.remove_instance(self.backend)
            except OSError as e:
                log.warning("cannot remove this instance's cgroups: %s", e)
        self.backend = None
        # The uid range first: once the instance lock goes, the name is free.
        for lock in (self._uid_lock, self._lock):
            if lock is not None:
                lock.release()
        self._uid_lock = self._lock = None


async def _take(name: str) -> HostLock | None:
    """The instance's host-wide liveness lock.  A crash sweep of another
    instance holds it for a moment while it removes what a dead `name` left:
    wait that out before calling the name taken."""
    deadline = time.monotonic() + INSTANCE_LOCK_WAIT
    while True:
        lock = HostLock.try_take(name)
        if lock is not None or time.monotonic() > deadline:
            return lock
        await asyncio.sleep(0.05)
