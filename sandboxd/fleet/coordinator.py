"""`sandboxd coordinator`: the host daemon's API in front of a fleet.

A coordinator holds no job state of its own: it validates a job with the
shared schema, enqueues it in Redis (one atomic script), and answers waits
from the results hosts publish.  Any number of replicas can run; a client
switches from one host to a fleet by changing an address, and a coordinator
that crashes loses nothing (a waiting client reconnects and reads the job
from another replica).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Coroutine
from typing import Any, Literal

import msgspec

from sandboxd.config import ENGINE, FLEET
from sandboxd.errors import ServiceError, error
from sandboxd.fleet import views
from sandboxd.fleet.admission import Admission
from sandboxd.fleet.events import Events, Snapshot
from sandboxd.fleet.files import RedisFiles
from sandboxd.fleet.keys import COMPAT_QUEUE
from sandboxd.fleet.outage import OutageLog
from sandboxd.fleet.store import FleetStore
from sandboxd.fleet.tenants import FleetTenants, today
from sandboxd.fleet.views import FINAL, job_info, unix
from sandboxd.jobs import callbacks
from sandboxd.jobs.backend import Load, Served
from sandboxd.jobs.fingerprint import Spec
from sandboxd.jobs.kinds import KINDS, JobKind, UnknownKind
from sandboxd.jobs.metrics import CoordinatorMetrics
from sandboxd.jobs.tenants import Tenants
from sandboxd.languages import Language
from sandboxd.schema import JobInfo, SchemaError

log = logging.getLogger(__name__)
MAX_DELIVERIES = 64  # callbacks in flight per coordinator; more wait in Redis


def _no_job(job_id: str) -> ServiceError:
    return error("not_found", f"no job {job_id!r} (unknown, or its result expired)")


class Coordinator(Admission):
    """wire.Frontend over the fleet's Redis state (entry checks: sandboxd.jobs.frontend;
    the enqueue path: sandboxd.fleet.admission)."""

    role, elsewhere = "coordinator", "coordinator"
    metrics: CoordinatorMetrics
    # The session proxy (sandboxd.fleet.sessionproxy), set by sandboxd.app.coordinator:
    # the Piston app's /api/v2/connect finds it here, as a daemon's its Sessions.
    sessions: object = None

    def __init__(
        self,
        store: FleetStore,
        *,
        aging: float = ENGINE.aging,
        queue_depth: int = FLEET.queue_depth,
        max_attempts: int = FLEET.max_attempts,
        lease: float = FLEET.lease,
        reap_interval: float = 0.5,
        callback_allow_private: bool = False,
    ) -> None:
        super().__init__(CoordinatorMetrics(), callback_allow_private)
        self.fleet_tenants = FleetTenants()  # none configured until use_tenants
        self.tenants = self.fleet_tenants
        self.store = store
        self.files: RedisFiles | None = None  # the fleet's file store (sandboxd.fleet.files)
        # Aging must be positive for FIFO within a priority (the score's time term).
        self.aging = max(aging, 1e-6)
        self.queue_depth = queue_depth
        self.max_attempts = max_attempts
        self.lease = lease  # the hosts' fleet_lease: the grace after a Redis outage
        self.reap_interval = reap_interval
        self._tasks: list[asyncio.Task[None]] = []
        self._hosts: list[dict[str, Any]] = []
        self._hosts_at = 0.0
        self._served: tuple[float, dict[str, Served]] = (float("-inf"), {})
        self._deliveries: set[asyncio.Task[None]] = set()
        self._redis_ok = False
        self._warn = OutageLog(log)
        self.events = Events(store, self._warn)
        self._snapshot = Snapshot()
        self.metrics.registry.register(self._snapshot)

    def use_tenants(self, tenants: Tenants) -> None:
        if not isinstance(tenants, FleetTenants):
            raise TypeError("a coordinator's tenants keep their fleet-wide limits in Redis: FleetTenants")
        super().use_tenants(tenants)
        self.fleet_tenants = tenants

    async def start(self) -> None:
        self._tasks = [asyncio.ensure_future(self.events.listen()), asyncio.ensure_future(self._reap_loop())]
        self._redis_ok = await self.store.ping()
        with contextlib.suppress(Exception):
            await self._refresh_hosts(force=True)

    async def close(self) -> None:
        if self._deliveries:  # callbacks under way: a few seconds to land
            await asyncio.wait(self._deliveries, timeout=5)
        tasks = [*self._tasks, *self.events.tasks(), *self._deliveries]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.store.close()

    # --- background: results and leases ---------------------------------

    async def _reap_loop(self) -> None:
        while True:
            await asyncio.sleep(self.reap_interval)
            try:
                requeued, lost, expired = await self.store.reap(self.max_attempts, self.lease)
                self._redis_ok = True
                if requeued or lost:
                    log.warning(
                        "fleet: %d jobs of silent hosts re-queued, %d failed after repeated losses", requeued, lost
                    )
                if expired:
                    log.info("fleet: %d queued jobs passed their queue deadline", expired)
                await self._notify()
            except Exception as e:
                self._redis_ok = False
                self._warn("lease reaper", e)

    async def _notify(self) -> None:
        """Deliver result callbacks (a native job's callback_url, a Judge0
        job's), whatever made the job final (a host's result, a cancel, a lost
        or quarantined job): the Lua queues their ids, every replica pops, each
        id reaches one.  At most once, as on a daemon: a coordinator that dies
        while delivering loses that callback."""
        room = MAX_DELIVERIES - len(self._deliveries)
        if room <= 0:
            return
        for jid in await self.store.notifications(room):
            try:
                d = await self.store.job(jid, spec=True)
                delivery = self._delivery(jid, d) if d is not None else None  # None: expired or deleted
            except Exception as e:
                self._warn("callback", e)
                continue
            if delivery is not None:
                t = asyncio.ensure_future(delivery)
                self._deliveries.add(t)
                t.add_done_callback(self._deliveries.discard)

    def _delivery(self, jid: str, d: dict[str, bytes]) -> Coroutine[Any, Any, Any] | None:
        url = d.get("callback")
        if url:  # a native job's callback_url
            return callbacks.deliver(url.decode(), self._info(jid, d), self.callback_allow_private)
        found = self._spec(jid, d)  # what follows a kind's result (a Judge0 callback)
        if found is None or not found[0].notifies(found[1]):
            return None
        return found[0].finished(jid, found[1], self._info(jid, d), self.callback_allow_private)

    async def _refresh_hosts(self, force: bool = False) -> list[dict[str, Any]]:
        if force or time.monotonic() - self._hosts_at > 1.0:
            self._hosts = await self.store.hosts()
            self._hosts_at = time.monotonic()
        return self._hosts

    # --- jobs ---------------------------------------------------------------

    async def _read(self, job_id: str) -> JobInfo:
        d = await self._redis("get", lambda: self.store.job(job_id))
        if d is None:
            raise _no_job(job_id)
        return self._info(job_id, d)

    _info = staticmethod(job_info)

    async def _times(self, info: JobInfo) -> None:
        """A published result carries no times (the host's own job's are not the
        fleet job's): read them, so a wait answers what a later GET does."""
        enq, finished = await self._redis("get", lambda: self.store.times(info.job))
        info.created_at, info.finished_at = unix(enq), unix(finished)

    async def job_info(self, job_id: str) -> JobInfo:
        return await self._read(job_id)

    async def wait_job(self, job_id: str, timeout: float | None = None) -> JobInfo:
        self.metrics.waiting.inc()
        t0 = time.monotonic()
        deadline = None if timeout is None else t0 + timeout
        try:
            with self.events.waiter(job_id) as fut:
                return await self._wait(job_id, fut, t0, deadline)
        finally:
            self.metrics.waiting.dec()

    async def _wait(self, job_id: str, fut: asyncio.Future[JobInfo], t0: float, deadline: float | None) -> JobInfo:
        """Until final or the deadline: the published result, else a read each second."""
        info = await self._read(job_id)
        while info.state not in FINAL:
            left = 1.0 if deadline is None else min(1.0, deadline - time.monotonic())
            if left <= 0:
                return info
            try:
                info = await asyncio.wait_for(asyncio.shield(fut), left)
                info.job = job_id
                await self._times(info)
            except TimeoutError:
                # No message (a reconnect, another replica's job): read it.
                info = await self._read(job_id)
        self.metrics.latency.labels(info.kind).observe(time.monotonic() - t0)
        self.events.stop_relay(job_id)
        return info

    async def cancel_job(self, job_id: str) -> JobInfo:
        r = await self._redis("cancel", lambda: self.store.cancel(job_id))
        if r == "missing":
            raise _no_job(job_id)
        return await self._read(job_id)

    # --- compat kinds: Judge0 / Piston (sandboxd.jobs.backend.Backend) ------------

    async def compat_job(self, job_id: str) -> tuple[Spec, JobInfo] | None:
        d = await self._redis("get", lambda: self.store.job(job_id, spec=True))
        if d is None or not KINDS.is_compat("fleet", d["kind"].decode()):
            return None
        found = self._spec(job_id, d)
        return None if found is None else (found[1], self._info(job_id, d))

    @staticmethod
    def _spec(job_id: str, d: dict[str, bytes]) -> tuple[JobKind[Any], Spec] | None:
        if d.get("spec") is None:
            return None
        try:
            return KINDS.decode_fleet(d["kind"].decode(), d["spec"])
        except (UnknownKind, msgspec.DecodeError, msgspec.ValidationError, SchemaError) as e:
            log.warning("fleet: job %s has a spec this version cannot read: %s", job_id, e)
            return None

    async def forget_job(self, job_id: str) -> Literal["ok", "missing", "pending"]:
        r: Literal["ok", "missing", "pending"] = await self._redis("forget", lambda: self.store.forget(job_id))
        return r

    async def compat_languages(self) -> dict[str, Served]:
        """The languages hosts that take untagged jobs serve, with the definition
        and version one of them registered (read at most once a second)."""
        at, served = self._served
        if time.monotonic() - at < 1.0:
            return served
        hosts = await self._redis("languages", lambda: self.store.hosts(definitions=True))
        served = {}
        for h in hosts:
            if h.get("only_tagged") or not isinstance(h.get("definitions"), dict):
                continue
            versions = {x.get("id"): x.get("version") or "" for x in h.get("languages", [])}
            for lid, raw in h["definitions"].items():
                if lid in served or lid not in versions:
                    continue
                try:
                    served[lid] = Served(msgspec.convert(raw, Language), versions[lid])
                except msgspec.ValidationError as e:
                    log.warning("fleet: host %s registered a language %s this version cannot read: %s", h["id"], lid, e)
        self._served = (time.monotonic(), served)
        return served

    async def compat_load(self) -> Load:
        hosts = await self._redis("status", self._refresh_hosts)
        depths = await self._redis("status", self.store.queue_depths)
        queued = sum(n for q, n in depths.items() if q.endswith(COMPAT_QUEUE))
        workers = [
            {
                "queue": h["id"],
                "size": queued,
                "available": int(h.get("capacity", 0)),
                "idle": max(0, int(h.get("capacity", 0)) - int(h.get("load", 0))),
                "working": int(h.get("load", 0)),
                "paused": int(bool(h["drained"])),
                "failed": 0,
            }
            for h in hosts
        ]
        return Load(queued, self.queue_depth, workers)

    # --- fleet state ----------------------------------------------------------

    async def status_info(self) -> dict[str, Any]:
        hosts = await self._redis("status", lambda: self._refresh_hosts(force=True))
        queues = await self._redis("status", self.store.queue_depths)
        stats = await self._redis("status", self.store.stats)
        st = views.status(hosts, queues, stats, self.draining)
        if self.tenants.configured:
            await self._redis("status", self._refresh_tenants)
            st["tenants"] = self.tenants.status()
        return st

    async def _refresh_tenants(self) -> None:
        """The tenants' fleet-wide figures (Redis) into what /v1/status and /metrics report."""
        if self.tenants.configured:
            day = today()
            self.fleet_tenants.refresh(await self.store.tenant_usage(day), day)

    async def dashboard_info(self) -> dict[str, Any]:
        hosts = await self._redis("status", lambda: self.store.hosts(series=True))
        queues = await self._redis("status", self.store.queue_depths)
        prios = await self._redis("status", self.store.queue_priorities)
        stats = await self._redis("status", self.store.stats)
        return views.dashboard(hosts, queues, prios, stats, self.draining)

    async def language_list(self) -> list[dict[str, Any]]:
        return views.languages(await self._redis("languages", lambda: self._refresh_hosts(force=True)))

    async def hosts(self) -> list[dict[str, Any]]:
        return list(await self._redis("hosts", lambda: self._refresh_hosts(force=True)))

    async def set_drained(self, host_id: str, drained: bool) -> dict[str, Any]:
        await self._redis("drain", lambda: self.store.set_drained(host_id, drained))
        for h in await self.hosts():
            if h["id"] == host_id:
                return h
        # Draining a host that is down (before it restarts) is allowed and sticks.
        return {"id": host_id, "drained": drained, "live": False}

    async def _refresh_metrics(self) -> None:
        with contextlib.suppress(Exception):
            self._snapshot.data = {
                "hosts": await self._refresh_hosts(force=True),
                "queues": await self.store.queue_depths(),
                "stats": await self.store.stats(),
            }
            await self._refresh_tenants()

    def unready_reason(self) -> str | None:
        if self.draining:
            return "draining"
        return None if self._redis_ok else "the fleet's Redis is unreachable"
