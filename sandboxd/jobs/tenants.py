"""Tenants of one daemon (or coordinator): who sent a request, and whether
its limits let the job in.

The transports find the caller (`identify`: a tenant's API key, or the
bearer token / no auth for the unnamed tenant) and set `CALLER` for the
request; the back end asks `Tenants.admit` before it admits the job to its
queues, and the job holds the returned `Charge` until it is final: that is
its place under the tenant's concurrency cap, and where its CPU seconds are
charged to the tenant's daily quota.

Limits answer:
- a language the tenant may not use: "forbidden" (403), naming it;
- a priority above the tenant's maximum: clamped, not refused (priority
  orders only a tenant's own jobs under fair share, so a higher one gains it
  nothing over other tenants; refusing would break clients written for an
  unlimited deployment for no protection);
- rate, concurrency, daily CPU quota: "rate_limited" (429) with Retry-After
  and the IETF RateLimit-* figures (`Caller.limit`).

State: the tenants file (JSON, keys as SHA-256, written by the admin API
atomically, mode 0600) and the day's CPU use (a small JSON file next to it,
rewritten at each charge), so that a restart resets no quota.
"""

from __future__ import annotations

import contextvars
import json
import os
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from sandboxd.errors import ServiceError, error
from sandboxd.schema import RunResult, SubmissionResult
from sandboxd.tenancy import NO_KEY, Tenant, TenantsFile, TokenBucket, hash_key, new_key, until_midnight, utc_day

UNNAMED = ""  # the unnamed tenant: the bearer token, or no auth
UNNAMED_LABEL = "(unnamed)"  # its name in /metrics and /v1/status (not a valid tenant name: no clash)
RAW_RUN_LANG = "host"  # what `languages` must list to allow raw-command runs (the "host" pool's)


@dataclass(slots=True)
class RateInfo:
    """The IETF RateLimit header fields of one reply."""

    limit: float
    remaining: int
    reset: float  # seconds
    retry_after: float = 0.0  # refused: seconds until it may retry

    def headers(self) -> dict[str, str]:
        h = {
            "RateLimit-Limit": f"{self.limit:g}",
            "RateLimit-Remaining": str(max(0, self.remaining)),
            "RateLimit-Reset": str(max(0, round(self.reset))),
        }
        if self.retry_after > 0:
            h["Retry-After"] = str(max(1, round(self.retry_after)))
        return h


@dataclass(slots=True)
class Caller:
    """Who sent the request being served.  tenant None: the unnamed tenant;
    admin: authenticated with the bearer token (may use the admin API)."""

    tenant: TenantState | None = None
    admin: bool = False
    limit: RateInfo | None = None  # set by Tenants.admit, read by the HTTP reply
    # The fleet tenant a coordinator proxies a live session for (its CPU billed
    # to that tenant's fleet-wide quota, sandboxd.fleet.sessionproxy); "": none.
    billed: str = ""


CALLER: contextvars.ContextVar[Caller | None] = contextvars.ContextVar("sandboxd_caller", default=None)


@dataclass(slots=True)
class TenantState:
    spec: Tenant
    bucket: TokenBucket | None
    running: int = 0
    jobs: int = 0
    cpu_seconds: float = 0.0  # since start (the counter)
    refused: Counter[str] = field(default_factory=Counter)

    @classmethod
    def of(cls, spec: Tenant) -> TenantState:
        return cls(spec, TokenBucket(spec.rate, spec.burst) if spec.rate > 0 else None)


class Charge:
    """A job's hold on its tenant: one place under the concurrency cap until
    close(), which charges the job's CPU seconds.  Idempotent."""

    __slots__ = ("name", "owner", "state", "weight")

    def __init__(self, owner: Tenants, state: TenantState | None, weight: float) -> None:
        self.owner, self.state, self.weight = owner, state, weight
        self.name = UNNAMED if state is None else state.spec.name

    def close(self, result: object = None) -> None:
        st, self.state = self.state, None
        if st is not None:
            st.running -= 1
            self.owner.charge(st, cpu_of(result))


def cpu_of(result: object) -> float:
    """CPU seconds a job's result reports: a run's, or a submission's compile + tests (+ compat runs)."""
    if isinstance(result, RunResult):
        return result.cpu_time
    if isinstance(result, SubmissionResult):
        compiled = result.compile.cpu_time if result.compile is not None else 0.0
        return compiled + sum(t.time for t in result.tests) + sum(r.cpu_time for r in result.runs)
    return 0.0


class Usage(msgspec.Struct):
    day: int = 0
    cpu: dict[str, float] = msgspec.field(default_factory=dict)


class Tenants:
    """The configured tenants and their usage.  path None: none (everyone is the unnamed tenant)."""

    def __init__(self, path: Path | None = None, unnamed_weight: float = 1.0) -> None:
        self.path = path
        self.unnamed_weight = unnamed_weight
        self._by_name: dict[str, TenantState] = {}
        self._by_hash: dict[str, TenantState] = {}
        self.usage = Usage(utc_day(time.time()))
        self.unnamed_jobs = 0
        if path is not None:
            self._load(path)

    @property
    def usage_path(self) -> Path | None:
        return None if self.path is None else self.path.with_suffix(".usage.json")

    def _load(self, path: Path) -> None:
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            data = b'{"tenants": []}'
        up = self.usage_path
        try:
            for spec in msgspec.json.decode(data, type=TenantsFile).tenants:
                self._add(spec)
            if up is not None and up.exists():
                self.usage = msgspec.json.decode(up.read_bytes(), type=Usage)
        except (msgspec.DecodeError, msgspec.ValidationError) as e:  # (the daemon does not start: say where)
            raise ValueError(f"tenants file {path} (or its .usage.json): {e}") from None

    def _add(self, spec: Tenant) -> None:
        if spec.name in self._by_name:
            raise ValueError(f"tenants: {spec.name!r} is named twice")
        st = TenantState.of(spec)
        self._by_name[spec.name] = st
        if spec.key_sha256 != NO_KEY:
            self._by_hash[spec.key_sha256] = st

    @property
    def configured(self) -> bool:
        return bool(self._by_name)

    def by_key(self, key: str) -> TenantState | None:
        # (a lookup by the hash: its timing tells nothing of any key's text)
        return self._by_hash.get(hash_key(key))

    # --- the admin API ----------------------------------------------------

    def create(self, spec: Tenant) -> str:
        """Add a tenant; returns its new key (the only time it is shown)."""
        if self.path is None:
            raise error("bad_request", "tenants: no tenants file is configured ([tenants] file)")
        if spec.name in self._by_name:
            raise error("conflict", f"tenant {spec.name!r} exists; delete it first to replace its key")
        key = new_key()
        self._add(msgspec.structs.replace(spec, key_sha256=hash_key(key)))
        self._save()
        return key

    def delete(self, name: str) -> None:
        st = self._by_name.pop(name, None)
        if st is None:
            raise error("not_found", f"no tenant {name!r}")
        self._by_hash.pop(st.spec.key_sha256, None)
        self._save()

    def listing(self) -> list[dict[str, Any]]:
        return [_public(st.spec) for st in self._by_name.values()]

    def _save(self) -> None:
        assert self.path is not None
        _write(self.path, msgspec.json.encode(TenantsFile([st.spec for st in self._by_name.values()])))

    # --- admission ----------------------------------------------------------

    def admit(self, lang: str, priority: int | None) -> tuple[Charge, int | None]:
        """The calling tenant's checks for a new job of `lang` ("" for a raw
        run): its Charge and the priority it runs at, or ServiceError."""
        caller = CALLER.get()
        st = None if caller is None else caller.tenant
        if st is None:
            self.unnamed_jobs += 1
            return Charge(self, None, self.unnamed_weight), priority
        spec = st.spec
        asked = lang or RAW_RUN_LANG
        if spec.languages and asked not in spec.languages:
            st.refused["language"] += 1
            what = f"language {asked!r}" if lang else f"raw-command runs (language {RAW_RUN_LANG!r})"
            raise error("forbidden", f"tenant {spec.name!r} may not use {what}; allowed: {', '.join(spec.languages)}")
        assert caller is not None
        self._within(st, caller)
        st.running += 1
        st.jobs += 1
        if priority is not None:
            priority = min(priority, spec.max_priority)
        return Charge(self, st, spec.weight), priority

    def _within(self, st: TenantState, caller: Caller) -> None:
        spec, now = st.spec, time.time()
        if spec.cpu_seconds_per_day > 0:
            used = self._used(spec.name, now)
            if used >= spec.cpu_seconds_per_day:
                raise self.over_quota(st, used)
        if spec.concurrency and st.running >= spec.concurrency:
            raise self.over_concurrency(st, st.running)
        self._rate(st, caller)

    def over_quota(self, st: TenantState, used: float) -> ServiceError:
        """The refusal of a job of a tenant that used `used` of its daily CPU quota (RateLimit figures set)."""
        spec, wait = st.spec, until_midnight(time.time())
        caller = CALLER.get()
        if caller is not None:
            caller.limit = RateInfo(spec.cpu_seconds_per_day, 0, wait, wait)
        return self._refuse(st, "quota", f"used {used:.1f} of its {spec.cpu_seconds_per_day:g} CPU seconds today", wait)

    def over_concurrency(self, st: TenantState, running: int) -> ServiceError:
        return self._refuse(st, "concurrency", f"has {running} jobs in flight (its cap: {st.spec.concurrency})", 1.0)

    def state(self, name: str) -> TenantState | None:
        return self._by_name.get(name)

    def states(self) -> Iterator[TenantState]:
        return iter(self._by_name.values())

    def _rate(self, st: TenantState, caller: Caller) -> None:
        spec = st.spec
        b = st.bucket
        if b is not None:
            wait = b.take()
            caller.limit = RateInfo(b.burst, b.remaining, b.reset(), wait)
            if wait > 0:
                raise self._refuse(st, "rate", f"sends more than its {spec.rate:g} jobs/s (burst {b.burst})", wait)

    @staticmethod
    def _refuse(st: TenantState, why: str, message: str, retry_after: float) -> ServiceError:
        st.refused[why] += 1
        return error("rate_limited", f"tenant {st.spec.name!r} {message}; retry in {retry_after:.0f} s", retry_after)

    def _used(self, name: str, now: float) -> float:
        day = utc_day(now)
        if self.usage.day != day:
            self.usage = Usage(day)
        return self.usage.cpu.get(name, 0.0)

    def charge(self, st: TenantState, cpu: float) -> None:
        st.cpu_seconds += cpu
        if cpu <= 0 or st.spec.cpu_seconds_per_day <= 0:
            return
        name = st.spec.name
        self.usage.cpu[name] = self._used(name, time.time()) + cpu
        up = self.usage_path
        if up is not None:
            _write(up, msgspec.json.encode(self.usage))

    # --- usage ------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """Usage per tenant; a tenant's own caller sees its own only."""
        now = time.time()
        caller = CALLER.get()
        mine = None if caller is None or caller.tenant is None else caller.tenant.spec.name
        out: dict[str, Any] = {}
        if mine is None:
            out[UNNAMED_LABEL] = {"jobs": self.unnamed_jobs, "weight": self.unnamed_weight}
        for name, st in self._by_name.items():
            if mine is not None and name != mine:
                continue
            out[name] = {
                "jobs": st.jobs,
                "running": st.running,
                "cpu_seconds": round(st.cpu_seconds, 3),
                "cpu_seconds_today": round(self._used(name, now), 3),
                "cpu_seconds_per_day": st.spec.cpu_seconds_per_day,
                "refused": dict(st.refused),
                "weight": st.spec.weight,
            }
        return out

    def collect(self) -> Iterator[Metric]:
        """Per-tenant series for /metrics (a prometheus_client collector: read
        at scrape time; one series per configured tenant, so bounded)."""
        now = time.time()
        labels = ["tenant"]
        jobs = CounterMetricFamily("sandboxd_tenant_jobs", "Jobs admitted per tenant", labels=labels)
        cpu = CounterMetricFamily("sandboxd_tenant_cpu_seconds", "CPU seconds charged per tenant", labels=labels)
        today = GaugeMetricFamily("sandboxd_tenant_cpu_seconds_today", "CPU seconds this UTC day", labels=labels)
        running = GaugeMetricFamily("sandboxd_tenant_running", "Jobs in flight per tenant", labels=labels)
        refused = CounterMetricFamily(
            "sandboxd_tenant_refused", "Jobs a tenant's limits refused", labels=["tenant", "reason"]
        )
        jobs.add_metric([UNNAMED_LABEL], self.unnamed_jobs)
        for name, st in self._by_name.items():
            jobs.add_metric([name], st.jobs)
            cpu.add_metric([name], st.cpu_seconds)
            today.add_metric([name], self._used(name, now))
            running.add_metric([name], st.running)
            for why in ("language", "rate", "concurrency", "quota"):
                refused.add_metric([name, why], st.refused[why])
        yield from (jobs, cpu, today, running, refused)


def _public(spec: Tenant) -> dict[str, Any]:
    d: dict[str, Any] = json.loads(msgspec.json.encode(spec))
    d.pop("key_sha256", None)
    return d


def _write(path: Path, data: bytes) -> None:
    """Atomically, readable by root only (the tenants file names every tenant)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
