"""An engine's own health: noticing that its cgroups or boxes were destroyed
underneath it (another process removed them, killed its agents), saying so,
and healing (rebuilding the hierarchy and the pools).

Checked every CHECK_INTERVAL seconds, and whenever someone asks (/readyz, a
run that failed on a broken box): a few stat calls, nothing on the run path.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable

from sandboxd.engine import sweep
from sandboxd.engine.pool import Pool
from sandboxd.sandbox import cgroups

log = logging.getLogger(__name__)

CHECK_INTERVAL = 1.0  # seconds between checks
RETRY = 1.0  # seconds between attempts of a heal that failed


class Health:
    def __init__(self, backend: Callable[[], cgroups.Backend | None], pools: Callable[[], list[Pool]]) -> None:
        self._backend = backend
        self._pools = pools
        self.problem: str | None = None  # why this engine is not healthy now
        self.heals = 0  # damage found and repaired, since start
        self._watcher: asyncio.Task[None] | None = None
        self._healing: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._watcher = asyncio.get_running_loop().create_task(self._watch())

    async def stop(self) -> None:
        for t in (self._watcher, self._healing):
            if t is not None:
                t.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await t
        self._watcher = self._healing = None

    def damage(self) -> str | None:
        backend = self._backend()
        if backend is None:
            return None
        for d in sweep.instance_dirs(backend):
            if not os.path.isdir(d):
                return f"cgroup {d} was removed underneath this daemon"
        for pool in self._pools():
            problem = pool.damage()
            if problem:
                return problem
        return None

    def check(self) -> str | None:
        """The current problem (None: healthy); starts healing if there is damage."""
        if self._healing is None:
            problem = self.damage()
            if problem is not None:
                self.problem = problem
                log.error("unhealthy: %s; healing (rebuilding cgroups and boxes)", problem)
                self._healing = asyncio.get_running_loop().create_task(self._heal())
        return self.problem

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(CHECK_INTERVAL)
            self.check()

    async def _heal(self) -> None:
        try:
            while True:
                try:
                    backend = self._backend()
                    if isinstance(backend, cgroups.V1 | cgroups.V2):
                        backend.setup()  # mkdir what was removed; idempotent
                    for pool in self._pools():
                        await pool.heal()
                    problem = self.damage()
                except (OSError, RuntimeError) as e:
                    problem = f"healing failed: {e}"
                if problem is None:
                    break
                self.problem = problem
                log.error("still unhealthy: %s; retrying in %.0f s", problem, RETRY)
                await asyncio.sleep(RETRY)
            self.heals += 1
            log.warning("healed: cgroups and boxes rebuilt; ready again (was: %s)", self.problem)
            self.problem = None
        finally:
            self._healing = None
