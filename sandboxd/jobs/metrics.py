"""Prometheus metrics of one daemon or coordinator (a registry each, so tests can run several).

`FrontendMetrics` are the operations' own (sandboxd.jobs.frontend), reported
alike by a host daemon and a fleet coordinator; `Metrics` adds a daemon's
boxes, queues and runs."""

from __future__ import annotations

from typing import Generic, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics import MetricWrapperBase

M = TypeVar("M", bound=MetricWrapperBase)

_RUN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class Children(Generic[M]):
    """A labelled metric's children, each looked up once: prometheus_client's
    labels() checks and converts its values and takes a lock on every call,
    and the per-run path observes one child per run (issue 18).  The label
    values are bounded sets (statuses, verdicts, languages), as the metric's
    own children are."""

    def __init__(self, metric: M) -> None:
        self.metric = metric
        self._by: dict[tuple[str, ...], M] = {}

    def __call__(self, *values: str) -> M:
        child = self._by.get(values)
        if child is None:
            child = self._by[values] = self.metric.labels(*values)
        return child


class FrontendMetrics:
    """What the operations count at their entry, on either back end."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry or CollectorRegistry()
        # reason: the wire code of the refusal (queue_full, queue_deadline, draining)
        self.rejections = Counter("sandboxd_rejections", "Jobs refused", ["reason"], registry=r)
        # Live sessions (sandboxd/jobs/sessions.py; a coordinator counts those it proxies).
        self.sessions_active = Gauge("sandboxd_sessions_active", "Live sessions open", registry=r)
        self.sessions = Counter("sandboxd_sessions", "Live sessions ended, by reason", ["reason"], registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class Metrics(FrontendMetrics):
    def __init__(self) -> None:
        super().__init__()
        r = self.registry
        self.queue_depth = Gauge("sandboxd_queue_depth", "Runs waiting for a box", ["pool", "priority"], registry=r)
        self.boxes = Gauge("sandboxd_boxes", "Boxes by state", ["pool", "state"], registry=r)
        self.recycled = Gauge("sandboxd_boxes_recycled", "Boxes destroyed and rebuilt", ["pool"], registry=r)
        self.agent_crashes = Gauge("sandboxd_agent_crashes", "Agents that died", ["pool"], registry=r)
        self.run_seconds = Histogram(
            "sandboxd_run_seconds", "Run latency, admission to result", ["status"], buckets=_RUN_BUCKETS, registry=r
        )
        self.submission_seconds = Histogram(
            "sandboxd_submission_seconds", "Submission latency", ["lang"], buckets=_RUN_BUCKETS, registry=r
        )
        self.verdicts = Counter("sandboxd_verdicts", "Test and submission verdicts", ["scope", "verdict"], registry=r)
        self.run_seconds_of = Children(self.run_seconds)  # (by status)
        self.submission_seconds_of = Children(self.submission_seconds)  # (by language)
        self.verdicts_of = Children(self.verdicts)  # (by scope and verdict)
        self.jobs = Gauge("sandboxd_jobs", "Jobs known by state", ["state"], registry=r)
        # Compiles run, and served from the compile cache (memory, disk or the fleet's store).
        self.compiles = Gauge("sandboxd_compiles", "Compiles run or served from a cache", ["result"], registry=r)
        self.files = Gauge("sandboxd_file_store_bytes", "Bytes in the file store", registry=r)
        self.healthy = Gauge("sandboxd_healthy", "1 unless cgroups or boxes were destroyed underneath", registry=r)
        self.heals = Counter("sandboxd_heals", "Times cgroups and boxes were rebuilt after damage", registry=r)
        self.budget_used = Gauge(
            "sandboxd_memory_budget_bytes", "Bytes reserved from the memory budget", ["holder"], registry=r
        )
        self.budget_limit = Gauge("sandboxd_memory_budget_limit_bytes", "The memory budget (memory_budget)", registry=r)
        self.store_bytes = Gauge(
            "sandboxd_job_store_bytes", "Bytes of specs and results in the job store", ["holder"], registry=r
        )
        self.store_limit = Gauge(
            "sandboxd_job_store_limit_bytes", "The job store's limit (jobs.store_max_bytes)", registry=r
        )
        self.store_evicted = Counter(
            "sandboxd_job_store_evicted", "Results evicted to keep the job store within its limit", registry=r
        )
        self._evicted = 0  # of the store's count, already in the counter
        # An idempotency key's lookup before a waited keyed run (sandboxd.jobs.keyfilter):
        # answered by the filter (a new key), or by the store (a retry, or a false positive).
        self.key_lookups = Counter(
            "sandboxd_job_store_key_lookups", "Idempotency key lookups, by what answered", ["answer"], registry=r
        )
        self.key_filter_rebuilds = Counter(
            "sandboxd_job_store_key_filter_rebuilds", "Rebuilds of the store's key filter", registry=r
        )
        self._keys = {"filter": 0, "store": 0, "rebuilds": 0}  # of the filter's counts, already in the counters

    def set_budget(self, limit: int, used: dict[str, int]) -> None:
        self.budget_limit.set(limit)
        for holder, n in used.items():
            self.budget_used.labels(holder).set(n)

    def set_store(self, usage: dict[str, int], keys: dict[str, int]) -> None:
        self.store_limit.set(usage["limit"])
        self.store_bytes.labels("unfinished").set(usage["unfinished"])
        self.store_bytes.labels("results").set(usage["results"])
        self.store_evicted.inc(usage["evicted"] - self._evicted)
        self._evicted = usage["evicted"]
        for answer in ("filter", "store"):
            self.key_lookups.labels(answer).inc(keys[answer] - self._keys[answer])
        self.key_filter_rebuilds.inc(keys["rebuilds"] - self._keys["rebuilds"])
        self._keys = dict(keys)


class CoordinatorMetrics(FrontendMetrics):
    """A fleet coordinator's own (sandboxd.fleet.coordinator); the fleet-wide
    series, read from Redis, are sandboxd.fleet.events.Snapshot's."""

    def __init__(self) -> None:
        super().__init__()
        r = self.registry
        self.latency = Histogram(
            "sandboxd_fleet_job_seconds",
            "Time clients waited for a job's result on this coordinator",
            ["kind"],
            buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        self.waiting = Gauge("sandboxd_fleet_waiters", "Clients waiting on this coordinator", registry=r)
