"""What a fleet job goes through from a request to the queue: the servable,
file and tenant checks, the idempotency key, the enqueue script, the replay of
a retried request and the progress relay (the Coordinator's admission half;
sandboxd.fleet.coordinator holds its state, reads, waits and fleet views).
"""

from __future__ import annotations

import secrets
from abc import abstractmethod
from collections.abc import Callable
from typing import Any

import msgspec

from sandboxd.errors import ServiceError, error
from sandboxd.fleet.events import Events
from sandboxd.fleet.files import RedisFiles
from sandboxd.fleet.keys import RUN_LANG, queue_name
from sandboxd.fleet.outage import transient
from sandboxd.fleet.store import FleetStore, TenantLimits
from sandboxd.fleet.tenants import FleetTenants
from sandboxd.fleet.views import FINAL, check_servable, hash_field
from sandboxd.jobs.files import refs_of
from sandboxd.jobs.fingerprint import Op, Spec
from sandboxd.jobs.frontend import Operations, conflict, keyed
from sandboxd.jobs.kinds import KINDS, SUBMISSION
from sandboxd.rates import retry_after
from sandboxd.schema import JobInfo, RunRequest, Submission, TestResult

_enc = msgspec.msgpack.Encoder()


def _idem(key: str | None, op: Op, spec: Spec, callback_url: str | None = None) -> tuple[str, str] | None:
    """(key, fingerprint) for the enqueue script: the key is bound to the
    request as on a daemon (sandboxd.jobs.frontend.keyed)."""
    bound = keyed(key, op, spec, callback_url)
    return None if bound is None else (bound.key, bound.fingerprint.hex())


def job_cost(sub: Submission) -> int:
    """Boxes a submission can keep busy at once: a host claims it only with that
    many free (capped at its pool's size).  A run, like a compat job, costs 1."""
    return SUBMISSION.cost(sub)


class Admission(Operations):
    """The enqueue path of sandboxd.fleet.coordinator.Coordinator, which sets
    these attributes and reads jobs and hosts."""

    store: FleetStore
    fleet_tenants: FleetTenants
    files: RedisFiles | None
    events: Events
    aging: float
    queue_depth: int
    _redis_ok: bool

    @abstractmethod
    async def _read(self, job_id: str) -> JobInfo: ...

    @abstractmethod
    async def _refresh_hosts(self, force: bool = False) -> list[dict[str, Any]]: ...

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

    async def _start_run(self, req: RunRequest, callback_url: str | None, key: str | None, waited: bool) -> JobInfo:
        # (waited or not: a fleet job is in Redis before any host can run it)
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
        self,
        sub: Submission,
        progress: Callable[[TestResult], None] | None,
        callback_url: str | None,
        key: str | None,
        waited: bool,
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
