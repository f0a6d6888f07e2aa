"""Tenants on a fleet coordinator: the daemon's tenants (sandboxd.jobs.tenants)
with the limits that must hold fleet-wide kept in Redis.

Checked here, per coordinator: the key, the languages, the priority clamp and
the rate limit (a token bucket per replica: behind N replicas a tenant can
send up to N times its rate; one replica, or sticky routing, keeps it exact).
Checked in the enqueue script, atomically across replicas: the concurrency cap
(the tenant's jobs in flight anywhere in the fleet, freed when the job turns
final whatever made it so) and the daily CPU quota (charged by the complete
script from the CPU seconds the host reports, so exactly once and with no
coordinator involved).  A live session is no fleet job: the coordinator
checks the quota when it opens one, and the host that ran it bills its CPU
seconds when it ends (SessionBills).  Figures for /metrics and /v1/status are read back
from Redis (`refresh`), so every replica shows the fleet's.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from sandboxd.fleet.outage import retry_transient
from sandboxd.fleet.store import FleetStore, TenantLimits, TenantUsage
from sandboxd.jobs.tenants import UNNAMED, Caller, Tenants, TenantState, Usage
from sandboxd.schema import RunRequest, Submission
from sandboxd.tenancy import utc_day

log = logging.getLogger(__name__)
BILLS_PENDING = 1024  # bills waiting for Redis at once (an outage); past it one is dropped, and logged
BILL_FOR = 60.0  # seconds a bill is retried through an outage


class FleetTenants(Tenants):
    """Tenants whose concurrency and CPU quota Redis keeps (fleet.lua)."""

    def _within(self, st: TenantState, caller: Caller) -> None:
        self._rate(st, caller)  # (quota and concurrency: the enqueue script)

    def charge(self, st: TenantState, cpu: float) -> None:
        pass  # (the complete script charges it)

    def admit_job(self, lang: str, spec: Any) -> TenantLimits:
        """The calling tenant's local checks for a job of `lang` (its priority
        clamped in `spec`); what the enqueue script checks of it fleet-wide
        (the unnamed tenant: name "", no limits)."""
        priority = getattr(spec, "priority", None)
        charge, allowed = self.admit(lang, priority)
        st = charge.state
        charge.close()  # (its place in flight is Redis's: the job's own record)
        if allowed is not None and allowed != priority and isinstance(spec, RunRequest | Submission):
            spec.priority = allowed
        if st is None:  # (no limits; its weight still orders it against the tenants: fleet.lua's fair share)
            return TenantLimits(UNNAMED, self.unnamed_weight, 0, 0.0)
        s = st.spec
        return TenantLimits(s.name, s.weight, s.concurrency, s.cpu_seconds_per_day)

    def refused(self, res: str, name: str, figure: str) -> Exception | None:
        """The enqueue script's refusal ('quota', 'busy') as the daemon words it; None if not one."""
        st = self.state(name)
        if st is None or res not in ("quota", "busy"):
            return None
        return self.over_quota(st, float(figure)) if res == "quota" else self.over_concurrency(st, int(figure))

    def refresh(self, usage: dict[str, TenantUsage], day: int) -> None:
        """The fleet's figures (sandboxd.fleet.store.FleetStore.tenant_usage) into the states that report them."""
        today: dict[str, float] = {}
        for st in self.states():
            u = usage.get(st.spec.name, TenantUsage())
            st.running, st.jobs, st.cpu_seconds = u.running, u.jobs, u.cpu_seconds
            today[st.spec.name] = u.cpu_today
        self.usage = Usage(day, today)


def today() -> int:
    return utc_day(time.time())


class SessionBills:
    """A fleet host's proxied sessions' CPU seconds to their tenants' quota
    (FleetStore.bill, sandboxd.jobs.sessions.Sessions.bill): sent in the
    background, retried through a Redis outage for BILL_FOR seconds."""

    def __init__(self, store: FleetStore) -> None:
        self.store = store
        self.pending: set[asyncio.Task[None]] = set()

    def __call__(self, tenant: str, cpu_seconds: float) -> None:
        if cpu_seconds <= 0:
            return
        if len(self.pending) >= BILLS_PENDING:
            log.warning(
                "fleet: %d session bills wait for Redis; %.3f CPU s of %s not billed",
                len(self.pending),
                cpu_seconds,
                tenant,
            )
            return
        t = asyncio.ensure_future(self._send(tenant, cpu_seconds))
        self.pending.add(t)
        t.add_done_callback(self.pending.discard)

    async def _send(self, tenant: str, cpu_seconds: float) -> None:
        try:
            await retry_transient(lambda: self.store.bill(tenant, cpu_seconds), BILL_FOR, lambda e: None)
        except Exception as e:
            log.error("fleet: %.3f CPU s of a session of %s not billed: %s", cpu_seconds, tenant, e)

    async def close(self, grace: float = 5.0) -> None:
        """At stop: the bills still waiting get `grace` seconds."""
        if self.pending:
            _, late = await asyncio.wait(list(self.pending), timeout=grace)
            for t in late:
                t.cancel()
