"""Warm boxes per rootfs: built ahead, handed out, reset, recycled, refilled.

Boxes differ only by rootfs, so languages that share one (all of them on the
embedded host default) share boxes.  A box goes back to the pool only after a
successful reset; after `max_runs` runs or any anomaly it is destroyed and a
fresh one is built in the background.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections import deque
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

from sandboxd.config import ENGINE
from sandboxd.sandbox.box import Box, BoxSpec
from sandboxd.sandbox.cgroups import Backend

log = logging.getLogger(__name__)

MAX_BUILD_FAILS = 5  # builds failing in a row before the pool gives up (until healed)


class UidAllocator:
    """Box uids: unprivileged, never the daemon's, different for every live box."""

    def __init__(self, base: int, count: int) -> None:
        self.free = deque(range(base, base + count))

    def take(self) -> int:
        if not self.free:
            raise RuntimeError("no free box uid: raise uid_count")
        return self.free.popleft()

    def give(self, uid: int) -> None:
        self.free.append(uid)


@dataclass
class PoolStats:
    warm: int = 0
    busy: int = 0
    building: int = 0
    built: int = 0
    recycled: int = 0
    build_failures: int = 0
    agent_crashes: int = 0
    last_error: str = ""


@dataclass
class Pool:
    name: str
    spec: BoxSpec
    backend: Backend
    uids: UidAllocator
    size: int
    max_runs: int = ENGINE.max_runs_per_box
    stats: PoolStats = field(default_factory=PoolStats)

    def __post_init__(self) -> None:
        self._idle: asyncio.Queue[Box] = asyncio.Queue()
        self._tasks: set[asyncio.Task[None]] = set()
        self._seq = 0
        self._closed = False
        self._live: set[Box] = set()
        self._waiting: set[Box] = set()  # the idle ones (the queue cannot be looked into)
        self._fails = 0
        self._loop: asyncio.AbstractEventLoop | None = None

    async def start(self, wait: bool = True) -> None:
        # Background work goes to this loop even when release() is called from
        # synchronous code between loop runs (tests and benchmarks do).
        self._loop = asyncio.get_running_loop()
        for _ in range(self.size):
            self._spawn_build()
        if wait:
            while self.stats.building and not self._fails:
                await asyncio.sleep(0.005)
            if self.stats.warm == 0 and self._fails:
                raise RuntimeError(f"pool {self.name}: cannot build a box: {self.stats.last_error}")

    def _spawn_build(self) -> None:
        # Counted now, not when the task first runs: start() waits on the count.
        self.stats.building += 1
        self._spawn(self._build())

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        loop = self._loop or asyncio.get_running_loop()
        t = loop.create_task(coro)
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)

    async def _build(self) -> None:
        uid = self.uids.take()
        self._seq += 1
        name = f"{self.name}-{self._seq}"
        try:
            cg = self.backend.create_box(name)
            box = await Box.create(name, uid, self.spec, cg)
        except Exception as e:
            self.uids.give(uid)
            self.stats.building -= 1
            self.stats.build_failures += 1
            self.stats.last_error = str(e)
            self._fails += 1
            log.error("pool %s: building a box failed: %s", self.name, e)
            if not self._closed and self._fails < MAX_BUILD_FAILS:
                await asyncio.sleep(0.1 * self._fails)
                if len(self._live) + self.stats.building < self.size:  # a heal may have rebuilt meanwhile
                    self._spawn_build()
            return
        self._fails = 0
        self.stats.building -= 1
        self.stats.built += 1
        if self._closed:
            await self._destroy(box)
            return
        self._live.add(box)
        self._put(box)

    def _put(self, box: Box) -> None:
        self.stats.warm += 1
        self._waiting.add(box)
        self._idle.put_nowait(box)

    async def acquire(self) -> Box:
        if self._closed:
            raise RuntimeError("pool closed")
        if self._idle.empty() and not self.stats.building and self._fails:
            raise RuntimeError(f"pool {self.name}: no box can be built: {self.stats.last_error}")
        while True:
            box = await self._idle.get()
            self._waiting.discard(box)
            self.stats.warm -= 1
            self.stats.busy += 1
            if box.alive:
                return box
            # Died while idle: never hand it out; replace it in the background.
            box.broken = "agent died while idle"
            self.release(box)

    def fold_reset(self) -> bool:
        """Whether a run on a box just acquired gets its reset in the agent's
        reply (Box.run then_reset): when other runs are in flight.  Then the
        CPU is contended, and the RESET round trip it saves is the daemon's
        CPU (and a background reset would compete with those runs); a lone
        run keeps the reset off its own path: the agent does it right after
        sending the result (Box.run reset_behind), _recycle awaits its READY."""
        return self.stats.busy > 1

    def release(self, box: Box) -> None:
        """Give a box back; it is reset (or replaced) in the background."""
        self.stats.busy -= 1
        if box.fresh and box.broken is None and box.runs < self.max_runs and not self._closed:
            # Reset by its agent in the run's reply (Box.run then_reset): no
            # round trip, no task.
            self._put(box)
            return
        self._spawn(self._recycle(box))

    async def _recycle(self, box: Box) -> None:
        if box.broken is None and box.runs < self.max_runs and not self._closed:
            try:
                await box.reset()
                self._put(box)
                return
            except Exception as e:
                box.broken = f"reset failed: {e}"
        if box.broken:
            log.warning("box %s recycled: %s", box.name, box.broken)
            if "agent" in box.broken:
                self.stats.agent_crashes += 1
        self.stats.recycled += 1
        await self._destroy(box)
        if not self._closed:
            self.stats.building += 1
            await self._build()

    async def _destroy(self, box: Box) -> None:
        self._live.discard(box)
        try:
            await box.close()
        finally:
            self.uids.give(box.uid)

    @staticmethod
    def _cgroups_there(box: Box) -> bool:
        return all(os.path.isdir(d) for d in box.cg.dirs.values())

    def intact(self, box: Box) -> bool:
        """Its agent alive and its cgroups still there (another process may
        have killed or removed them underneath us)."""
        return box.alive and self._cgroups_there(box)

    def damage(self) -> str | None:
        """What is wrong with this pool, in words; None if nothing is."""
        # Agents: only idle boxes count (a busy box's agent may die of its run,
        # handled there); cgroups: every box (they never go away on their own).
        lost = [b for b in self._live if not (self.intact(b) if b in self._waiting else self._cgroups_there(b))]
        if lost:
            return f"pool {self.name}: {len(lost)} of {len(self._live)} boxes lost their agent or cgroup"
        if self._fails >= MAX_BUILD_FAILS and not self.stats.building:
            return f"pool {self.name}: cannot build boxes: {self.stats.last_error}"
        return None

    async def heal(self) -> None:
        """Replace every box that is not intact and build up to `size` again;
        returns once the builds are done (or keep failing)."""
        if self._closed:
            return
        self._fails = 0
        keep: list[Box] = []
        lost: list[Box] = []
        while not self._idle.empty():
            box = self._idle.get_nowait()
            self._waiting.discard(box)
            self.stats.warm -= 1
            (keep if self.intact(box) else lost).append(box)
        for box in keep:
            self._put(box)
        for box in self._live:
            if not self.intact(box):
                box.broken = "its agent or cgroup was destroyed underneath the daemon"  # busy: replaced on release
        for box in lost:
            self.stats.recycled += 1
            await self._destroy(box)
        for _ in range(self.size - len(self._live) - self.stats.building):
            self._spawn_build()
        while self.stats.building and not self._fails:
            await asyncio.sleep(0.005)

    async def close(self) -> None:
        self._closed = True
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
        while not self._idle.empty():
            self._idle.get_nowait()
        self._waiting.clear()
        await asyncio.gather(*(self._destroy(b) for b in list(self._live)), return_exceptions=True)
