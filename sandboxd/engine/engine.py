"""The engine: pools of warm boxes plus the run and compile-and-run flows.

One Engine per process.  It owns a host-wide instance name (cgroups, lock,
box uids: sandboxd.engine.instance); on start it removes what crashed
instances left behind.  Pools run on the host's /usr or on a language's
rootfs tree (sandboxd.rootfs.store), switched on reload_rootfs().  What a
compile produces and how it is cached: sandboxd.engine.compiled.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import msgspec

from sandboxd.config import DEFAULT, ENGINE, Config, default_memory_budget, default_pool_size
from sandboxd.engine import compiled
from sandboxd.engine.budget import COMPILE_CACHE_SHARE, Admission, ByteLRU, MemoryBudget, nbytes
from sandboxd.engine.compiled import Compiled as Compiled
from sandboxd.engine.health import Health
from sandboxd.engine.instance import UID_FLOOR as UID_FLOOR
from sandboxd.engine.instance import Instance
from sandboxd.engine.instance import InstanceBusy as InstanceBusy
from sandboxd.engine.pool import Pool, UidAllocator
from sandboxd.engine.scheduler import AdmissionQueue, QueueFull, Ticket
from sandboxd.languages import Language, load_dir
from sandboxd.rootfs import store
from sandboxd.rootfs.mounts import Rootfs, from_tree, host_default
from sandboxd.sandbox import agentbin, cgroups, seccomp
from sandboxd.sandbox.agentchan import AgentDied
from sandboxd.sandbox.box import Box, BoxSpec, RunControl, Stdio
from sandboxd.sandbox.boxfiles import Refused, Room
from sandboxd.schema import FileIn, Limits, RunRequest, RunResult, SchemaError, check_resolved, validate_run

log = logging.getLogger(__name__)


@dataclass
class EngineConfig:
    """The engine's settings: the configuration's [engine] section and the
    instance's names and directories (`from_config`), plus what tests and
    the CLI set; the defaults are the configuration's (sandboxd.config)."""

    instance: str = DEFAULT.instance
    state_dir: Path = agentbin.DEFAULT_DIR
    run_dir: Path = Path(DEFAULT.run_dir)
    pool_size: int = field(default_factory=default_pool_size)
    max_runs_per_box: int = ENGINE.max_runs_per_box
    # None: lease a free range of `uid_count` uids host-wide (Instance.lease_uids),
    # so a daemon, one-shot CLI runs and tests never share a box uid.
    uid_base: int | None = None
    uid_count: int = 1000
    box_bytes: int = BoxSpec.box_bytes  # the box's own sizes are the box's defaults
    tmp_bytes: int = BoxSpec.tmp_bytes
    shm_bytes: int = BoxSpec.shm_bytes
    languages_dir: Path | None = None
    queue_depth: int = ENGINE.queue_depth  # waiting runs per pool before new ones are rejected
    aging: float = ENGINE.aging  # priority points a waiting run gains per second
    lang_capacity: dict[str, int] = field(default_factory=dict)  # max concurrent runs per language
    rootfs_override: dict[str, Path] = field(default_factory=dict)  # language -> tree (verifying a build)
    memory_budget: int = ENGINE.memory_budget  # bytes (sandboxd.engine.budget); 0: derived from the host's memory

    @classmethod
    def from_config(cls, cfg: Config) -> EngineConfig:
        e = cfg.engine
        return cls(
            instance=cfg.instance,
            state_dir=Path(cfg.state_dir),
            run_dir=Path(cfg.run_dir),
            pool_size=e.pool_size,
            max_runs_per_box=e.max_runs_per_box,
            queue_depth=e.queue_depth,
            aging=e.aging,
            lang_capacity=dict(e.lang_capacity),
            memory_budget=e.memory_budget,
            languages_dir=Path(e.languages_dir) if e.languages_dir else None,
        )


@dataclass(frozen=True)
class PreparedRun:
    """A compiled program's checked run request without stdin (Engine.prepare_run)."""

    comp: Compiled
    request: RunRequest


@dataclass
class SourceResult:
    compile: RunResult | None
    run: RunResult | None


class Engine:
    def __init__(self, cfg: EngineConfig) -> None:
        self.cfg = cfg
        self.pools: dict[str, Pool] = {}
        self.queues: dict[str, AdmissionQueue] = {}
        self.lang_queues: dict[str, AdmissionQueue] = {}
        self.budget = MemoryBudget(cfg.memory_budget or default_memory_budget())
        # Compiled programs, evicted by bytes (a judge rejudges often: keep what fits).
        self._compiled = ByteLRU[bytes, Compiled](self.budget, "compile_cache", COMPILE_CACHE_SHARE)
        # Compiled programs on disk and in the fleet (the file store), set by the service.
        self.compile_store: compiled.CompileStore | None = None
        self.compile_counts = {"compiled": 0, "hit": 0}  # compiles run, and served from a cache
        self.versions: dict[str, str] = {}
        self.lang_pool: dict[str, str] = {}  # language -> pool (rootfs) name
        self._tree_holds: dict[str, store.TreeHold] = {}  # pool -> its rootfs tree, held in use
        self.languages: dict[str, Language] = {}
        self.backend: cgroups.Backend | None = None
        self.instance = Instance(cfg.instance)
        self.health = Health(lambda: self.backend, lambda: list(self.pools.values()))
        # Called once a run's RUN is out and its box is busy, when the loop has
        # nothing of that run to do until the agent replies: the service's
        # deferrable work goes there (JobStore.flush_due), off the run's path.
        self.while_running: Callable[[], None] | None = None

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

    async def _start(self) -> None:
        cfg = self.cfg
        self.backend = await self.instance.claim()
        self.languages = load_dir(cfg.languages_dir)
        newroot = cfg.run_dir / "newroot"
        newroot.mkdir(parents=True, exist_ok=True)
        agent = agentbin.ensure(cfg.state_dir)
        clone_into = self.backend.clone_into
        bpf = seccomp.compile_default(worker_clone3=clone_into)
        base = cfg.uid_base if cfg.uid_base is not None else self.instance.lease_uids(cfg.uid_count)
        uids = UidAllocator(base, cfg.uid_count)
        self._box_spec = functools.partial(
            BoxSpec,
            agent=agent,
            seccomp=bpf,
            newroot=newroot,
            box_bytes=cfg.box_bytes,
            tmp_bytes=cfg.tmp_bytes,
            shm_bytes=cfg.shm_bytes,
            clone_into=clone_into,
            guard_clone3=clone_into,
        )
        self._uids = uids
        await self._add_pool("host", host_default())
        for lang in self.languages.values():
            name, tree = self._resolve_rootfs(lang)
            self.lang_pool[lang.id] = name
            if name not in self.pools:
                assert tree is not None
                await self._add_pool(name, from_tree(tree, name), tree)
        for lang_id, cap in cfg.lang_capacity.items():
            if lang_id not in self.languages:
                raise ValueError(f"lang_capacity: unknown language {lang_id!r}")
            self.lang_queues[lang_id] = AdmissionQueue(lang_id, cap, cfg.queue_depth, cfg.aging)
        self.health.start()

    def _resolve_rootfs(self, lang: Language) -> tuple[str, Path | None]:
        """(pool name, tree): the language's built tree if one is live, else the host."""
        recipe = lang.rootfs or lang.id
        tree = self.cfg.rootfs_override.get(lang.id)
        if tree is None and recipe != "host":
            tree = store.current(self.cfg.state_dir, recipe)
        if tree is None:
            return "host", None
        return f"{recipe}@{tree.name}", tree

    async def _add_pool(self, name: str, rfs: Rootfs, tree: Path | None = None) -> None:
        cfg = self.cfg
        if tree is not None:
            # `rootfs build` and reload_rootfs never remove a tree in use.
            self._tree_holds[name] = store.TreeHold(tree)
        pool = Pool(name, self._box_spec(rfs), self.backend_or_fail, self._uids, cfg.pool_size, cfg.max_runs_per_box)
        self.pools[name] = pool
        self.queues[name] = AdmissionQueue(name, cfg.pool_size, cfg.queue_depth, cfg.aging)
        await pool.start()

    @property
    def backend_or_fail(self) -> cgroups.Backend:
        assert self.backend is not None
        return self.backend

    async def reload_rootfs(self) -> list[str]:
        """Switch languages whose live tree changed (SIGHUP after `rootfs build`):
        new runs go to a new pool at once; the old pool drains, then is closed
        and its tree released.  Returns the languages switched."""
        switched = []
        for lang in list(self.languages.values()):
            name, tree = self._resolve_rootfs(lang)
            if name == self.lang_pool.get(lang.id):
                continue
            if name not in self.pools:
                await self._add_pool(name, from_tree(tree, name) if tree else host_default(), tree)
            self.lang_pool[lang.id] = name
            switched.append(lang.id)
            log.info("language %s now runs on %s", lang.id, name)
        for old in [n for n in self.pools if n != "host" and n not in self.lang_pool.values()]:
            pool = self.pools.pop(old)
            q = self.queues.pop(old)
            while q.running or q.depth:
                await asyncio.sleep(0.05)
            await pool.close()
            hold = self._tree_holds.pop(old, None)
            if hold is not None:
                hold.release()
            recipe = old.split("@", 1)[0]
            for p in store.remove_unused(self.cfg.state_dir, recipe, keep=set()):
                log.info("removed unused rootfs tree %s", p)
        return switched

    def pool_of(self, lang: Language) -> str:
        return self.lang_pool.get(lang.id, "host")

    def admit(
        self, lang: str | None, runs: int, payload: object, what: str = "the job", force: bool = False
    ) -> Admission:
        """A new job's admission, before it is acknowledged: `runs` places in
        its queues (its language's pool, and its lang_capacity queue if any)
        and its request's bytes in the memory budget.  Raises QueueFull (or
        BudgetFull) when either is full: the job is refused, never failed later.
        force: a job the daemon acknowledged before a restart is admitted whatever
        the queues and the budget hold (it was promised a result)."""
        ticket = Ticket()
        try:
            spec = self.languages.get(lang) if lang else None
            lq = self.lang_queues.get(lang) if lang else None
            if lq is not None:
                lq.admit(ticket, runs, force)
            self.queues[self.pool_of(spec) if spec else "host"].admit(ticket, runs, force)
            n = nbytes(payload)
            hold = self.budget.force("requests", n) if force else self.budget.admit_request(n, what)
        except QueueFull:
            ticket.close()
            raise
        return Admission(ticket, hold)

    async def run(
        self,
        req: RunRequest,
        rootfs: str = "host",
        *,
        priority: int = 0,
        deadline: float | None = None,
        lang: str | None = None,
        stdio: Stdio | None = None,
        control: RunControl | None = None,
        room: Room | None = None,
        checked: bool = False,
    ) -> RunResult:
        """One run on a warm box, after admission at `priority`.  deadline: the
        monotonic time after which waiting in the queue is given up.  room: the
        memory budget's leave for each file out (budget.ResultHold.room).
        checked: validate_run has passed (a job's, when it was accepted): only
        its hashes are looked at again (issue 18: the rest is not done twice)."""
        if checked:
            check_resolved(req)  # (a hash left unresolved would run as empty bytes)
        else:
            validate_run(req, resolved=True)
        return await self._run_checked(req, rootfs, priority, deadline, lang, stdio, control, room)

    async def _run_checked(
        self,
        req: RunRequest,
        rootfs: str,
        priority: int,
        deadline: float | None,
        lang: str | None,
        stdio: Stdio | None,
        control: RunControl | None,
        room: Room | None = None,
    ) -> RunResult:
        """`run` of a request validate_run has passed (`run`, or `prepare_run` once for many)."""
        pool = self.pools[rootfs]
        lq = self.lang_queues.get(lang or "") if self.lang_queues else None
        queues = (lq, self.queues[rootfs]) if lq else (self.queues[rootfs],)
        admitted: list[tuple[AdmissionQueue, float]] = []
        handed = stdio is None  # the caller's fds go to a box, which closes them; else here
        try:
            for q in queues:
                wait = None if deadline is None else max(0.0, deadline - time.monotonic())
                admitted.append((q, await q.acquire(priority, wait)))
            for attempt in (1, 2):
                box = await pool.acquire()
                handed = True
                try:
                    # A retry gets fresh stdio only if the first attempt never started.
                    # (released below, so reset next: unless folded, the agent starts it behind the reply)
                    fold = pool.fold_reset()
                    if self.while_running is not None:
                        # (runs after box.run's first suspension: its RUN sent, unless it waited before)
                        asyncio.get_running_loop().call_soon(self.while_running)
                    return await box.run(
                        req, stdio if attempt == 1 else None, control, then_reset=fold, reset_behind=not fold, room=room
                    )
                except AgentDied as e:
                    # The run never started: a transparent retry on a fresh box.
                    box.broken = f"agent died: {e}"
                    if attempt == 2 or stdio is not None:
                        return RunResult(status="internal_error", message=f"the box failed: {e}")
                except Refused as e:
                    raise SchemaError(f"files_in: {e}") from None
                except OSError as e:
                    # Its cgroup files gone (ENODEV): destroyed underneath us.
                    box.broken = f"run failed: {e}"
                    why = self.health.check() or "the box is replaced"
                    return RunResult(status="internal_error", message=f"the box failed: {e}; {why}")
                finally:
                    pool.release(box)
        finally:
            for q, t in reversed(admitted):
                q.release(t)
            if not handed:
                assert stdio is not None
                for fd in stdio:
                    os.close(fd)
        raise AssertionError("unreachable")

    def language(self, lang_id: str) -> Language:
        lang = self.languages.get(lang_id)
        if lang is None:
            raise SchemaError(f"lang: unknown {lang_id!r}; known: {', '.join(sorted(self.languages))}")
        return lang

    async def compile(
        self,
        lang_id: str,
        source: bytes,
        files: list[FileIn] | tuple[FileIn, ...] = (),
        options: list[str] | tuple[str, ...] = (),
        limits: Limits | None = None,
        *,
        priority: int = 0,
        deadline: float | None = None,
    ) -> Compiled:
        """Compile once; identical compiles are served from a bounded cache
        (a judge sees the same source many times: rejudges, checkers)."""
        lang = self.language(lang_id)
        sources = compiled.sources_of(lang, source, files)
        if not lang.compile:
            return Compiled(lang, None, sources)
        key = compiled.cache_key(lang_id, sources, list(options), limits, self.versions.get(lang_id, ""))
        hit = self._compiled.get(key) or await self._stored_compile(lang, key)
        if hit is not None:
            self.compile_counts["hit"] += 1
            return hit
        req = compiled.compile_request(lang, sources, list(options), limits)
        res = await self.run(req, self.pool_of(lang), priority=priority, deadline=deadline, lang=lang_id)
        self.compile_counts["compiled"] += 1
        comp = compiled.compiled_from(lang, res)
        if comp.ok:
            self._compiled.put(key, comp, nbytes(comp.files) + nbytes(res))
            if self.compile_store is not None:
                await self.compile_store.save(key.hex(), compiled.encode_compiled(comp))
        return comp

    async def _stored_compile(self, lang: Language, key: bytes) -> Compiled | None:
        """A compile this host (or, through the file store, the fleet) did before."""
        data = None if self.compile_store is None else await self.compile_store.load(key.hex())
        comp = None if data is None else compiled.decode_compiled(lang, data)
        if comp is not None:
            self._compiled.put(key, comp, nbytes(comp.files) + nbytes(comp.result))
        return comp

    def prepare_run(self, comp: Compiled, limits: Limits | None = None) -> PreparedRun:
        """The runs of one compiled program under one set of limits, built and
        checked once: a submission's tests differ only in their stdin (bytes,
        which need no check), so validate_run and the request's assembly are
        paid once per submission instead of once per test."""
        req = validate_run(compiled.run_request(comp, b"", limits, (), None, ()), resolved=True)
        return PreparedRun(comp, req)

    async def run_prepared(
        self, prep: PreparedRun, stdin: bytes, *, priority: int = 0, deadline: float | None = None
    ) -> RunResult:
        """`run_compiled(comp, stdin, limits)` of a prepare_run's program and limits."""
        # (a copy: the prepared request is shared by every test, never changed)
        req = msgspec.structs.replace(prep.request, stdin=stdin)
        lang = prep.comp.lang
        res = await self._run_checked(req, self.pool_of(lang), priority, deadline, lang.id, None, None)
        compiled.runtime_memory_error(lang, res)
        return res

    async def run_compiled(
        self,
        comp: Compiled,
        stdin: bytes = b"",
        limits: Limits | None = None,
        *,
        files_in: list[FileIn] | tuple[FileIn, ...] = (),
        files_out: list[str] | None = None,
        args: list[str] | tuple[str, ...] = (),
        priority: int = 0,
        deadline: float | None = None,
        stdio: Stdio | None = None,
        control: RunControl | None = None,
    ) -> RunResult:
        lang = comp.lang
        req = compiled.run_request(comp, stdin, limits, files_in, files_out, args)
        res = await self.run(
            req, self.pool_of(lang), priority=priority, deadline=deadline, lang=lang.id, stdio=stdio, control=control
        )
        compiled.runtime_memory_error(lang, res)
        return res

    async def run_source(
        self,
        lang_id: str,
        source: bytes,
        stdin: bytes = b"",
        limits: Limits | None = None,
        files_out: list[str] | None = None,
        args: list[str] | None = None,
    ) -> SourceResult:
        comp = await self.compile(lang_id, source)
        if not comp.ok:
            return SourceResult(comp.result, None)
        run = await self.run_compiled(comp, stdin, limits, files_out=files_out, args=args or ())
        return SourceResult(comp.result, run)

    async def selftest(self) -> dict[str, str]:
        """Run every language's self-test (echo stdin) and detect its version.

        Languages that fail are dropped (logged with the reason): a judge must
        not accept submissions it cannot run.  Returns {language: failure}."""
        probe = "sandboxd self-test\n\u00e9 2 3\n".encode()

        async def one(lang: Language) -> str | None:
            if not lang.selftest:
                return "no self-test program"
            comp = await self.compile(lang.id, lang.selftest.encode())
            if not comp.ok:
                assert comp.result is not None
                return f"compile {comp.result.status}: {(comp.result.stderr or comp.result.stdout)[-500:]!r}"
            r = await self.run_compiled(comp, probe)
            if r.status != "ok" or r.stdout != probe:
                return f"run {r.status}: stdout {r.stdout[:100]!r}, stderr {r.stderr[-300:]!r} {r.message}"
            if lang.version:
                lim = lang.fit(lang.default_limits)
                v = await self.run(RunRequest(cmd=lang.version, env=lang.env, limits=lim), self.pool_of(lang))
                m = re.search(lang.version_regex, (v.stdout + v.stderr).decode(errors="replace"))
                self.versions[lang.id] = m.group(1) if m else "unknown"
            return None

        langs = list(self.languages.values())
        results = await asyncio.gather(*(one(lang) for lang in langs), return_exceptions=True)
        failed: dict[str, str] = {}
        for lang, res in zip(langs, results, strict=True):
            if res is not None:
                failed[lang.id] = str(res)
                del self.languages[lang.id]
                log.error("language %s disabled: self-test failed: %s", lang.id, res)
            else:
                log.info("language %s ready: %s", lang.id, self.versions.get(lang.id, "?"))
        return failed

    async def box(self, rootfs: str = "host") -> Box:
        """A warm box for callers that drive it directly (benchmarks)."""
        return await self.pools[rootfs].acquire()

    def release(self, box: Box, rootfs: str = "host") -> None:
        self.pools[rootfs].release(box)

    async def close(self) -> None:
        await self.health.stop()
        await asyncio.gather(*(p.close() for p in self.pools.values()), return_exceptions=True)
        self.pools.clear()
        for hold in self._tree_holds.values():
            hold.release()
        self._tree_holds.clear()
        self.instance.close()
        self.backend = None
