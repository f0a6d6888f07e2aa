"""A host daemon's side of the fleet: claim jobs while boxes are free, run them, report.

Pull with leases, not push: a host asks for work only when one of its pools
has a free box, so a job never waits behind a busy host while another has a
free warm box, and hosts of different sizes get work in proportion to their
boxes without the coordinator knowing anyone's load.  A claimed job carries a
lease the host renews with its heartbeat; if the host dies, hangs or loses
Redis, the lease runs out and the job is queued again (sandboxd/data/fleet.lua).

Wake-ups: every enqueue pushes a token on its queue's wake list; an idle host
blocks in BLPOP on the lists it can serve, so one host (the one waiting
longest) wakes per job instead of all of them, and idle hosts also poll once a
second in case a token went to a host that could not use it.

This module is the claim loop and its leases; what runs a claimed job is an
Executor (sandboxd.fleet.executor: the host daemon's Service).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from sandboxd.config import FLEET, FleetSettings
from sandboxd.fleet.keys import BY_HASH, RUN_LANG, queue_name
from sandboxd.fleet.outage import Backoff, OutageLog, retry_transient, transient
from sandboxd.fleet.store import Beat, Claimed, Displaced, FleetStore, Unregistered
from sandboxd.jobs.tenants import cpu_of
from sandboxd.jobs.timeseries import Bucket
from sandboxd.schema import Error, JobInfo, TestResult

log = logging.getLogger(__name__)


class BadJob(Exception):
    """A claimed job whose spec does not decode or validate: it is quarantined."""


class HandBack(Exception):
    """The host cannot take this job now (it is stopping): back to the queue."""


class Running(Protocol):
    def cancel(self) -> None: ...

    async def result(self) -> JobInfo: ...


class Executor(Protocol):
    """What a host runs claimed jobs on: the daemon's Service (sandboxd.fleet.executor),
    or a simulation.  `start` raises BadJob or HandBack for a job it will not run."""

    def pools(self) -> dict[str, tuple[int, int]]:
        """pool name -> (boxes, runs in progress or waiting from any source)."""
        ...

    def pool_of(self, lang: str) -> str | None:
        """The pool a language runs in ("" = a plain run); None if not served."""
        ...

    def languages(self) -> list[dict[str, Any]]: ...

    def series(self) -> list[Bucket]:
        """Run times per second, the last SERIES_SECONDS (sandboxd.jobs.timeseries): the coordinator's dashboard."""
        ...

    def definitions(self) -> dict[str, Any]:
        """Language id -> its definition (sandboxd.languages.Language as builtins), for
        the languages whose Judge0/Piston jobs this host runs; {} for none."""
        ...

    def start(
        self,
        kind: str,
        spec: bytes,
        deadline_left: float | None,
        on_test: Callable[[TestResult], None] | None,
        tenant: tuple[str, float] | None = None,
    ) -> Running:
        """tenant: (name, weight) of the job's tenant, for the host's fair share; None: the unnamed one."""
        ...


@dataclass(eq=False)
class _Inflight:
    claim: Claimed
    pool: str
    run: Running | None = None
    task: asyncio.Task[None] | None = None
    handed_back: bool = False  # released to the queue; its local result is dropped
    lost: bool = False  # another holder has it now; our result would be refused
    published: list[asyncio.Task[None]] = field(default_factory=list)  # progress events in flight


@dataclass
class HostSettings:
    """The configuration's [fleet] section as a host uses it (`from_config`)."""

    host_id: str
    tags: list[str] = field(default_factory=list)
    only_tagged: bool = False  # reserved hosts: take only jobs that require one of our tags
    lease: float = FLEET.lease
    heartbeat: float = FLEET.heartbeat
    max_attempts: int = FLEET.max_attempts
    batch: int = 16  # jobs per claim call
    info: dict[str, Any] = field(default_factory=dict)  # extra fields for /v1/hosts (address, version)

    @classmethod
    def from_config(cls, fleet: FleetSettings, host_id: str, info: dict[str, Any]) -> HostSettings:
        return cls(
            host_id=host_id,
            tags=list(fleet.tags),
            only_tagged=fleet.only_tagged,
            lease=fleet.lease,
            heartbeat=fleet.heartbeat,
            max_attempts=fleet.max_attempts,
            info=info,
        )


class HostWorker:
    def __init__(self, store: FleetStore, executor: Executor, settings: HostSettings) -> None:
        self.store = store
        self.ex = executor
        self.cfg = settings
        self.session = secrets.token_hex(8)
        self.inflight: dict[str, _Inflight] = {}
        self.used: dict[str, int] = {}  # pool -> boxes promised to claimed fleet jobs
        self.drained = False
        self.displaced = False
        self.registered = asyncio.Event()
        self.leaving = False
        self._freed = asyncio.Event()
        self._claimer: asyncio.Task[None] | None = None
        self._beater: asyncio.Task[None] | None = None
        self._blpop: asyncio.Task[str | None] | None = None
        self._warn = OutageLog(log)
        self.claimed_total = 0
        self.compat_langs: set[str] = set()  # languages whose Judge0/Piston jobs we claim

    # --- life cycle -------------------------------------------------------

    async def start(self) -> None:
        self._claimer = self._loop(self._claim_loop, "claim")
        self._beater = self._loop(self._heartbeat_loop, "heartbeat")

    def _loop(self, body: Callable[[], Any], name: str) -> asyncio.Task[None]:
        async def forever() -> None:
            # The loops handle Redis errors themselves; this catches bugs, so a
            # host never keeps running without claiming or renewing leases.
            while True:
                try:
                    await body()
                    return
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("fleet: %s loop failed; restarting it", name)
                    await asyncio.sleep(1)

        return asyncio.ensure_future(forever())

    async def leave(self, grace: float) -> None:
        """Stop claiming; give running jobs `grace` seconds, hand the rest back; leave the index."""
        self.leaving = True
        self._freed.set()
        if self._claimer is not None:
            # Not cancelled mid-claim: jobs claimed on the server must reach inflight.
            _, late = await asyncio.wait([self._claimer], timeout=15)
            for t in late:
                t.cancel()
        if self._blpop is not None:
            self._blpop.cancel()
        pending = [i.task for i in self.inflight.values() if i.task is not None]
        if pending:
            log.info("fleet: leaving; waiting up to %.0f s for %d jobs", grace, len(pending))
            await asyncio.wait(pending, timeout=grace)
        for item in list(self.inflight.values()):
            item.handed_back = True
            if item.run is not None:
                item.run.cancel()
            with contextlib.suppress(Exception):
                r = await asyncio.wait_for(self.store.release(item.claim.id, self.session), 5)
                log.info("fleet: handed job %s back (%s)", item.claim.id, r)
        # The heartbeat stops before the host leaves the index, so it cannot re-register.
        if self._beater is not None:
            self._beater.cancel()
            await asyncio.gather(self._beater, return_exceptions=True)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.store.leave(self.cfg.host_id, self.session), 5)
        log.info("fleet: left as host %s", self.cfg.host_id)

    # --- registration and heartbeat -----------------------------------------

    def _fields(self) -> dict[str, Any]:
        pools = self.ex.pools()
        load = {p: max(self.used.get(p, 0), busy) for p, (_cap, busy) in pools.items()}
        return {
            "pools": {p: cap for p, (cap, _busy) in pools.items()},
            "capacity": sum(cap for cap, _ in pools.values()),
            "load": sum(load.values()),
            "running": len(self.inflight),
            "series": self.ex.series(),
        }

    async def _register(self) -> None:
        """Until it succeeds: a host that cannot register must keep trying, not die."""
        if self.displaced:
            # The process that displaced us has gone: come back as a new session.
            self.session, self.displaced = secrets.token_hex(8), False
        backoff = Backoff(0.1, 5.0)
        while True:
            try:
                definitions = self.ex.definitions()
                self.compat_langs = set(definitions)
                fields = {
                    **self._fields(),
                    "languages": self.ex.languages(),
                    "definitions": definitions,
                    "tags": self.cfg.tags,
                    "only_tagged": self.cfg.only_tagged,
                    BY_HASH: True,  # (it claims the jobs that name files by hash: keys.HASH_QUEUE)
                    "pid": os.getpid(),
                    **self.cfg.info,
                }
                self.drained = await self.store.register(self.cfg.host_id, self.session, self.cfg.lease, fields)
                self.registered.set()
                self._freed.set()
                log.info("fleet: joined as host %s%s", self.cfg.host_id, " (drained)" if self.drained else "")
                return
            except Exception as e:
                if transient(e):
                    self._warn("cannot register", e)
                else:
                    log.error("fleet: cannot register: %s (retrying)", e)
                await backoff.wait()

    async def _heartbeat_loop(self) -> None:
        await self._register()
        n = 0
        while True:
            await asyncio.sleep(self.cfg.heartbeat)
            try:
                beat = await self.store.heartbeat(
                    self.cfg.host_id, self.session, self.cfg.lease, self._fields(), list(self.inflight)
                )
                self._on_beat(beat)
                # Every host helps re-queue the jobs of dead hosts (cheap, idempotent).
                n += 1
                if n % 2 == 0:
                    await self.store.reap(self.cfg.max_attempts, self.cfg.lease)
            except Unregistered:
                log.warning("fleet: our host entry is gone from Redis; registering again")
                self.registered.clear()
                await self._register()
            except Displaced:
                if not self.displaced:
                    log.error(
                        "fleet: another process registered host id %s; this one stops taking jobs", self.cfg.host_id
                    )
                self.displaced = True
            except Exception as e:
                if transient(e):
                    self._warn("heartbeat", e)
                else:
                    log.error("fleet: heartbeat failed: %s", e)

    def _on_beat(self, beat: Beat) -> None:
        if beat.drained != self.drained:
            log.info("fleet: host %s %s", self.cfg.host_id, "drained" if beat.drained else "undrained")
            self.drained = beat.drained
            self._freed.set()
        for jid in beat.cancel:
            item = self.inflight.get(jid)
            if item is not None and item.run is not None:
                log.info("fleet: job %s cancelled by a client", jid)
                item.run.cancel()
        for jid in beat.lost:
            item = self.inflight.get(jid)
            if item is not None and not item.lost:
                # Its lease ran out (we were stopped or cut off) and it is
                # someone else's now: stop duplicating work.
                log.warning("fleet: lost the lease of job %s; stopping it here", jid)
                item.lost = True
                if item.run is not None:
                    item.run.cancel()

    # --- claiming -----------------------------------------------------------

    def _claim_args(self) -> tuple[list[tuple[str, int]], list[tuple[int, int]], list[str]]:
        pools = self.ex.pools()
        names = sorted(pools)
        index = {p: i for i, p in enumerate(names)}
        caps = []
        for p in names:
            cap, busy = pools[p]
            caps.append((max(0, cap - max(self.used.get(p, 0), busy)), cap))
        tags: list[str | None] = list(self.cfg.tags)
        if not self.cfg.only_tagged:
            tags.append(None)
        queues = []
        langs = ["", *(lang["id"] for lang in self.ex.languages())]
        for lang in langs:
            pool = self.ex.pool_of(lang)
            if pool is None or pool not in index:
                continue
            for tag in tags:
                queues.append((queue_name(lang or RUN_LANG, tag), index[pool]))
                queues.append((queue_name(lang or RUN_LANG, tag, by_hash=True), index[pool]))
            if lang in self.compat_langs and not self.cfg.only_tagged:  # (compat jobs name no tag)
                queues.append((queue_name(lang, None, compat=True), index[pool]))
        return queues, caps, names

    async def _claim_loop(self) -> None:
        await self.registered.wait()
        backoff = Backoff()
        while not self.leaving:
            self._freed.clear()
            if self.drained or self.displaced or not self.registered.is_set():
                await self._idle([], 1.0)
                continue
            queues, pools, names = self._claim_args()
            open_queues = [q for q, p in queues if pools[p][0] > 0]
            if not open_queues:
                await self._idle([], 1.0)
                continue
            try:
                claimed = await self.store.claim(
                    self.cfg.host_id, self.session, self.cfg.lease, self.cfg.batch, queues, pools
                )
                backoff.reset()
            except (Unregistered, Displaced):
                await self._idle([], 0.5)  # the heartbeat loop sorts registration out
                continue
            except Exception as e:
                if transient(e):
                    self._warn("claim", e)
                else:
                    log.error("fleet: claim failed: %s", e)
                await backoff.wait()
                continue
            if claimed is None:
                self.drained = True
                continue
            for c in claimed:
                self._start(c, names[c.pool])
            if not claimed:
                await self._idle(open_queues, 1.0)

    async def _idle(self, queues: list[str], timeout: float) -> None:
        """Until a wake-up token for `queues`, a freed box, or the timeout."""
        waits: list[asyncio.Future[Any]] = [asyncio.ensure_future(self._freed.wait())]
        if queues:
            if self._blpop is None or self._blpop.done():
                self._blpop = asyncio.ensure_future(self.store.wait_for_work(queues, timeout))
            waits.append(self._blpop)
        try:
            await asyncio.wait(waits, timeout=timeout + 0.5, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waits[0].cancel()
        blpop = self._blpop
        if blpop is None or not blpop.done():
            return  # still waiting: the next _idle reuses it
        self._blpop = None
        if blpop.cancelled():
            return
        e = blpop.exception()
        if e is not None:
            if transient(e):
                self._warn("waiting for work", e)
            else:
                log.error("fleet: waiting for work failed: %s", e)
            await asyncio.sleep(0.5)
            return
        woke = blpop.result()
        if woke is not None and self._full():
            # A wake-up meant for a host with a free box: pass it on.
            with contextlib.suppress(Exception):
                await self.store.rewake(woke)

    def _full(self) -> bool:
        if self.drained or self.displaced or self.leaving:
            return True
        _, pools, _ = self._claim_args()
        return not any(free > 0 for free, _ in pools)

    def _start(self, c: Claimed, pool: str) -> None:
        self.claimed_total += 1
        item = _Inflight(c, pool)
        self.inflight[c.id] = item
        on_test = None
        if c.progress:

            def on_test(t: TestResult) -> None:
                item.published.append(asyncio.ensure_future(self._publish(c.id, t)))

        try:
            item.run = self.ex.start(
                c.kind, c.spec, c.deadline_left, on_test, (c.tenant, c.weight) if c.tenant else None
            )
        except BadJob as e:
            log.error("fleet: quarantining job %s: %s", c.id, e)
            item.task = asyncio.ensure_future(self._quarantine(item, str(e)))
            return
        except HandBack as e:
            log.warning("fleet: handing job %s back: %s", c.id, e)
            item.handed_back = True
            item.task = asyncio.ensure_future(self._release(item))
            return
        except Exception:
            log.exception("fleet: could not start job %s; handing it back", c.id)
            item.handed_back = True
            item.task = asyncio.ensure_future(self._release(item))
            return
        self.used[pool] = self.used.get(pool, 0) + c.cost
        item.task = asyncio.ensure_future(self._finish(item))

    async def _publish(self, job_id: str, t: TestResult) -> None:
        try:
            await self.store.publish_progress(job_id, t)
        except Exception as e:
            # Progress is a courtesy: the final result carries every test anyway.
            self._warn("publishing progress", e)

    async def _quarantine(self, item: _Inflight, why: str) -> None:
        try:
            await self._retry(lambda: self.store.quarantine(item.claim.id, item.claim.kind, why))
        except Exception:
            log.exception("fleet: could not quarantine job %s (its lease will run out)", item.claim.id)
        finally:
            self.inflight.pop(item.claim.id, None)

    async def _release(self, item: _Inflight) -> None:
        try:
            await self._retry(lambda: self.store.release(item.claim.id, self.session), limit=30)
        except Exception:
            log.exception("fleet: could not hand job %s back (its lease will run out)", item.claim.id)
        finally:
            self.inflight.pop(item.claim.id, None)

    async def _finish(self, item: _Inflight) -> None:
        c = item.claim
        try:
            assert item.run is not None
            info = await item.run.result()
        except Exception as e:
            log.exception("fleet: job %s failed on this host", c.id)
            info = JobInfo(c.id, "run" if c.kind == "run" else "submission", "failed")
            info.error = Error("internal", f"internal error: {e}")
        finally:
            self.used[item.pool] = max(0, self.used.get(item.pool, 0) - c.cost)
            self._freed.set()
        try:
            if item.handed_back or item.lost:
                return
            # Every test's event goes out before the final result does.
            await asyncio.gather(*item.published, return_exceptions=True)
            info.job, info.host = c.id, self.cfg.host_id
            # (The local job's times are not the fleet job's: readers get those from Redis.)
            info.created_at = info.finished_at = None
            cpu = cpu_of(info.result)  # (charged to its tenant in the same script)
            r = await self._retry(
                lambda: self.store.complete(c.id, self.session, c.attempt, info, self.cfg.host_id, cpu)
            )
            if r != "ok":
                log.info("fleet: result of job %s not taken (%s): another run finished first", c.id, r)
        except Exception:
            log.exception("fleet: could not report job %s (its lease will run out and it runs again)", c.id)
        finally:
            self.inflight.pop(c.id, None)

    async def _retry(self, call: Callable[[], Any], limit: float = 600.0) -> Any:
        # A result exists only here until Redis takes it: keep trying through an outage.
        return await retry_transient(call, limit, lambda e: self._warn("reporting a result", e))
