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
import secrets
import time
from collections.abc import Callable, Coroutine
from typing import Any, Literal

import msgspec

from sandboxd.config import ENGINE, FLEET
from sandboxd.errors import ServiceError, error
from sandboxd.fleet import views
from sandboxd.fleet.events import Events, Snapshot
from sandboxd.fleet.files import RedisFiles
from sandboxd.fleet.keys import COMPAT_QUEUE, RUN_LANG, queue_name
from sandboxd.fleet.store import FleetStore, OutageLog, TenantLimits, transient
from sandboxd.fleet.tenants import FleetTenants, today
from sandboxd.fleet.views import FINAL, check_servable, hash_field, job_info, unix
from sandboxd.jobs import callbacks
from sandboxd.jobs.backend import Load, Served
from sandboxd.jobs.files import refs_of
from sandboxd.jobs.fingerprint import Op, Spec
from sandboxd.jobs.frontend import Operations, conflict, keyed
from sandboxd.jobs.kinds import KINDS, SUBMISSION, JobKind, UnknownKind
from sandboxd.jobs.metrics import CoordinatorMetrics
from sandboxd.jobs.tenants import Tenants
from sandboxd.languages import Language
from sandboxd.rates import retry_after
from sandboxd.schema import JobInfo, RunRequest, SchemaError, Submission, TestResult

log = logging.getLogger(__name__)
_enc = msgspec.msgpack.Encoder()
MAX_DELIVERIES = 64  # callbacks in flight per coordinator; more wait in Redis


def _idem(key: str | None, op: Op, spec: Spec, callback_url: str | None = None) -> tuple[str, str] | None:
    """(key, fingerprint) for the enqueue script: the key is bound to the
    request as on a daemon (sandboxd.jobs.frontend.keyed)."""
    bound = keyed(key, op, spec, callback_url)
    return None if bound is None else (bound.key, bound.fingerprint.hex())


def _no_job(job_id: str) -> ServiceError:
    return error("not_found", f"no job {job_id!r} (unknown, or its result expired)")


def job_cost(sub: Submission) -> int:
    """Boxes a submission can keep busy at once: a host claims it only with that
    many free (capped at its pool's size).  A run, like a compat job, costs 1."""
    return SUBMISSION.cost(sub)


class Coordinator(Operations):
    """wire.Frontend over the fleet's Redis state (entry checks: sandboxd.jobs.frontend)."""

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

    async def _redis(self, what: str, call: Callable[[], Any]) -> Any:
        """One Redis call for a client request: an outage is a clear, retryable error."""
        try:
            r = await call()
            self._redis_ok = True
            return r
        except Exception as e:
            if not transient(e):
                raise
            self._redis_ok = False
            raise error("draining", f"{what}: the fleet's Redis is unreachable ({e}); retry") from None

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

    # --- admission ----------------------------------------------------------

    async def _check_servable(self, lang: str, tag: str | None, by_hash: str = "") -> None:
        check_servable(await self._redis("hosts", self._refresh_hosts), lang, tag, by_hash)

    async def _enqueue(
        self,
        kind: str,
        lang: str,
        spec: bytes,
        tag: str | None,
        priority: int = 0,
        cost: int = 1,
        deadline: float | None = None,
        progress: Callable[[TestResult], None] | None = None,
        jid: str | None = None,
        notify: bool = False,
        callback_url: str | None = None,
        idem: tuple[str, str] | None = None,
        compat: bool = False,
        tenant: TenantLimits | None = None,
        by_hash: str = "",
    ) -> JobInfo:
        """idem: (idempotency key, request fingerprint), bound to the job in the enqueue script.
        tenant: its tenant's fleet-wide limits, checked by the same script (None: the unnamed tenant).
        by_hash: the first field naming a file by hash ("": none): the job goes to a hash queue (keys.HASH_QUEUE)."""
        self.refuse_if_draining()
        try:
            await self._check_servable(lang, tag, by_hash)
        except ServiceError:
            # A retry of a job accepted before its hosts went away: the job is the answer.
            found = None if idem is None else await self._redis("enqueue", lambda: self.store.keyed(idem[0]))
            if idem is None or found is None:
                raise
            return await self._replayed(idem, "dup" if found[1] == idem[1] else "conflict", found[0], progress)
        jid = jid or secrets.token_urlsafe(12)
        queue = queue_name(lang or RUN_LANG, tag, compat=compat, by_hash=bool(by_hash))
        if progress is not None:
            # Listening before the job exists, so no test's event can be missed.
            await self._redis("progress", lambda: self._relay(jid, progress))
        res, n = await self._redis(
            "enqueue",
            lambda: self.store.enqueue(
                jid,
                kind,
                lang,
                tag or "",
                queue,
                spec,
                priority,
                self.aging,
                cost,
                deadline,
                self.queue_depth,
                progress is not None,
                notify,
                callback_url or "",
                *(idem or ("", "")),
                tenant=tenant,
            ),
        )
        if res in ("dup", "conflict") and idem is not None:
            self.events.stop_relay(jid)
            return await self._replayed(idem, res, n, progress)
        if res == "full":
            self.events.stop_relay(jid)
            retry = retry_after(n, self.events.drained.rate())
            why = f"fleet queue {queue} holds {n} jobs, its limit; retry in {retry:.0f} s"
            raise self.refused("queue_full", why, retry)
        if res != "ok":
            self.events.stop_relay(jid)
            limit = None if tenant is None else self.fleet_tenants.refused(res, tenant.name, n)
            if limit is not None:
                raise limit
            if res in ("quota", "busy"):  # (its tenant was deleted meanwhile)
                raise error("rate_limited", f"the tenant's fleet-wide limits refused the job ({res})", 1.0)
            raise error("bad_request", f"job id {jid!r} is in use")
        return JobInfo(jid, "run" if kind == "run" else "submission", "queued")

    async def _replayed(
        self, idem: tuple[str, str], res: str, jid: str, progress: Callable[[TestResult], None] | None
    ) -> JobInfo:
        """The job an idempotency key already started (res 'dup'), or the conflict."""
        if res == "conflict":
            raise conflict(idem[0], jid)
        info = await self._read(jid)
        if progress is not None and info.state not in FINAL:
            # (Tests that finished before this retry are in the result, not re-sent as events.)
            await self._redis("progress", lambda: self._relay(jid, progress))
        return info

    async def _relay(self, jid: str, progress: Callable[[TestResult], None]) -> None:
        async def is_final() -> bool:
            return (await self._read(jid)).state in FINAL

        await self.events.relay(jid, progress, is_final)

    async def _check_files(self, spec: RunRequest | Submission) -> None:
        """Refused before it is queued: a job naming a file the fleet's store lacks."""
        files = self.files
        if files is not None:
            await self._redis("files", lambda: files.check_refs(spec))
        elif refs_of(spec):
            raise error("bad_request", f"{refs_of(spec)[0][0]}: this coordinator has no file store")

    async def _start_run(self, req: RunRequest, callback_url: str | None, key: str | None) -> JobInfo:
        await self._check_files(req)
        tenant = self.fleet_tenants.admit_job("", req)
        spec = _enc.encode(req)
        idem = _idem(key, "run", req, callback_url)
        return await self._enqueue(
            "run",
            "",
            spec,
            req.host_tag,
            req.priority,
            1,
            req.queue_deadline,
            callback_url=callback_url,
            idem=idem,
            tenant=tenant,
            by_hash=hash_field(req),
        )

    async def _start_submission(
        self, sub: Submission, progress: Callable[[TestResult], None] | None, callback_url: str | None, key: str | None
    ) -> JobInfo:
        await self._check_files(sub)
        tenant = self.fleet_tenants.admit_job(sub.lang, sub)
        spec = _enc.encode(sub)
        return await self._enqueue(
            "submission",
            sub.lang,
            spec,
            sub.host_tag,
            sub.priority,
            job_cost(sub),
            sub.queue_deadline,
            progress,
            callback_url=callback_url,
            idem=_idem(key, "submit", sub, callback_url),
            tenant=tenant,
            by_hash=hash_field(sub),
        )

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

    async def start_compat(self, spec: Spec, job_id: str, *, idempotency_key: str | None = None) -> JobInfo:
        kind = KINDS.of(spec)
        tenant = self.fleet_tenants.admit_job(kind.lang(spec), spec)
        data = KINDS.encode(spec)
        idem = _idem(idempotency_key, kind.op, spec)
        notify = kind.notifies(spec)
        return await self._enqueue(
            kind.fleet,
            kind.lang(spec),
            data,
            None,
            jid=job_id,
            notify=notify,
            idem=idem,
            compat=kind.compat,
            tenant=tenant,
        )

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
