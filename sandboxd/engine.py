"""The engine: pools of warm boxes plus the run and compile-and-run flows.

One Engine per process.  It owns a host-wide instance name (cgroups, lock);
on start it removes what crashed instances left behind.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from . import agentbin, cgroups, seccomp
from .box import AgentDied, Box, BoxSpec
from .boxfiles import Refused
from .languages import Language, load_dir
from .pool import Pool, UidAllocator
from .rootfs import Rootfs, host_default
from .schema import FileIn, Limits, RunRequest, RunResult, SchemaError, validate_run

log = logging.getLogger(__name__)


# Box uids live far above any real account (Debian's dynamic users end at
# 60000, subuid ranges usually start at 100000 and take 65536 per user).
UID_FLOOR = 2_000_000
UID_SLOTS = 64


def default_pool_size() -> int:
    # Two warm boxes per core keep every core busy while the others reset.
    return max(2, 2 * (os.cpu_count() or 1))


@dataclass
class EngineConfig:
    instance: str = "default"
    state_dir: Path = agentbin.DEFAULT_DIR
    run_dir: Path = Path("/run/sandboxd")
    pool_size: int = field(default_factory=default_pool_size)
    max_runs_per_box: int = 1000
    # None: lease a free range of `uid_count` uids host-wide (see _lease_uids),
    # so a daemon, one-shot CLI runs and tests never share a box uid.
    uid_base: int | None = None
    uid_count: int = 1000
    box_bytes: int = 256 << 20
    tmp_bytes: int = 64 << 20
    shm_bytes: int = 64 << 20
    languages_dir: Path | None = None


@dataclass
class SourceResult:
    compile: RunResult | None
    run: RunResult | None


class InstanceBusy(RuntimeError):
    pass


class Engine:
    def __init__(self, cfg: EngineConfig) -> None:
        self.cfg = cfg
        self.pools: dict[str, Pool] = {}
        self.languages: dict[str, Language] = {}
        self.backend: cgroups.Backend | None = None
        self._lock_fd = -1
        self._uid_fd = -1

    @classmethod
    async def start(cls, cfg: EngineConfig | None = None) -> Engine:
        eng = cls(cfg or EngineConfig())
        try:
            await eng._start()
        except BaseException:
            await eng.close()
            raise
        return eng

    async def __aenter__(self) -> Engine:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _lock(self, name: str, blocking: bool) -> int:
        d = self.cfg.run_dir / "locks"
        d.mkdir(parents=True, exist_ok=True)
        fd = os.open(d / f"{name}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            return -1
        return fd

    def _lease_uids(self) -> int:
        """The first free slot of UID_SLOTS ranges above UID_FLOOR; held by a lock
        for the engine's lifetime, released by the kernel if the process dies."""
        for slot in range(UID_SLOTS):
            fd = self._lock(f"uids-{slot}", blocking=False)
            if fd >= 0:
                self._uid_fd = fd
                return UID_FLOOR + slot * self.cfg.uid_count
        raise InstanceBusy(f"all {UID_SLOTS} box uid ranges are in use on this host")

    async def _start(self) -> None:
        cfg = self.cfg
        self._lock_fd = self._lock(cfg.instance, blocking=False)
        if self._lock_fd < 0:
            raise InstanceBusy(f"sandboxd instance {cfg.instance!r} is already running on this host")
        self.backend = backend = cgroups.detect(cfg.instance)
        swept = backend.sweep()
        if swept:
            log.warning("removed %d cgroups left by a crashed instance %r", swept, cfg.instance)
        for other in cgroups.other_instances(backend):
            fd = self._lock(other, blocking=False)
            if fd < 0:
                continue  # alive
            try:
                cgroups.remove_instance(cgroups.for_instance(backend, other))
                log.warning("removed leftovers of dead instance %r", other)
            except OSError as e:
                log.warning("cannot remove leftovers of instance %r: %s", other, e)
            finally:
                os.close(fd)
        self.languages = load_dir(cfg.languages_dir)
        newroot = cfg.run_dir / "newroot"
        newroot.mkdir(parents=True, exist_ok=True)
        agent = agentbin.ensure(cfg.state_dir)
        bpf = seccomp.compile_default()
        base = cfg.uid_base if cfg.uid_base is not None else self._lease_uids()
        uids = UidAllocator(base, cfg.uid_count)
        rootfs_by_name: dict[str, Rootfs] = {"host": host_default()}
        for name in sorted({lang.rootfs for lang in self.languages.values()} | {"host"}):
            if name not in rootfs_by_name:
                raise ValueError(f"unknown rootfs {name!r}")
            spec = BoxSpec(rootfs_by_name[name], agent, bpf, newroot, cfg.box_bytes, cfg.tmp_bytes, cfg.shm_bytes)
            self.pools[name] = Pool(name, spec, backend, uids, cfg.pool_size, cfg.max_runs_per_box)
        await asyncio.gather(*(p.start() for p in self.pools.values()))

    async def run(self, req: RunRequest, rootfs: str = "host") -> RunResult:
        validate_run(req)
        pool = self.pools[rootfs]
        for attempt in (1, 2):
            box = await pool.acquire()
            try:
                return await box.run(req)
            except AgentDied as e:
                # The run never started: a transparent retry on a fresh box.
                box.broken = f"agent died: {e}"
                if attempt == 2:
                    return RunResult(status="internal_error", message=f"box failed twice: {e}")
            except Refused as e:
                raise SchemaError(f"files_in: {e}") from None
            finally:
                pool.release(box)
        raise AssertionError("unreachable")

    async def run_source(
        self,
        lang_id: str,
        source: bytes,
        stdin: bytes = b"",
        limits: Limits | None = None,
        files_out: list[str] | None = None,
        args: list[str] | None = None,
    ) -> SourceResult:
        lang = self.languages.get(lang_id)
        if lang is None:
            raise SchemaError(f"language: unknown {lang_id!r}; known: {', '.join(sorted(self.languages))}")
        files = [FileIn(lang.source, source)]
        comp = None
        if lang.compile:
            comp = await self.run(
                RunRequest(
                    cmd=lang.compile, env=lang.env, files_in=files, files_out=lang.artifacts, limits=lang.compile_limits
                ),
                lang.rootfs,
            )
            missing = [f for f in comp.files if f.content is None]
            if comp.status != "ok" or missing:
                return SourceResult(comp, None)
            files = [FileIn(f.path, f.content or b"", executable=True) for f in comp.files]
        run = await self.run(
            RunRequest(
                cmd=lang.run + (args or []),
                env=lang.env,
                stdin=stdin,
                files_in=files,
                files_out=files_out or [],
                limits=limits or Limits(),
            ),
            lang.rootfs,
        )
        return SourceResult(comp, run)

    async def box(self, rootfs: str = "host") -> Box:
        """A warm box for callers that drive it directly (benchmarks)."""
        return await self.pools[rootfs].acquire()

    def release(self, box: Box, rootfs: str = "host") -> None:
        self.pools[rootfs].release(box)

    async def close(self) -> None:
        await asyncio.gather(*(p.close() for p in self.pools.values()), return_exceptions=True)
        self.pools.clear()
        if self.backend is not None and self._lock_fd >= 0:
            try:
                cgroups.remove_instance(self.backend)
            except OSError as e:
                log.warning("cannot remove this instance's cgroups: %s", e)
            self.backend = None
        for fd in (self._lock_fd, self._uid_fd):
            if fd >= 0:
                os.close(fd)
        self._lock_fd = self._uid_fd = -1
