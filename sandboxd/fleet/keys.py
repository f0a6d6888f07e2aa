"""Redis key names of a fleet, in one place (sandboxd/data/fleet.lua builds the same).

Every key starts with the prefix in braces, a Redis Cluster hash tag: all of a
fleet's keys share one slot, which the Lua script needs (it derives job keys
from queue entries).  Several fleets can share a Redis under different prefixes.
"""

from __future__ import annotations

# Aging scores are seconds since this instant (2026-01-01 UTC), which keeps
# them small enough for a double to order jobs to the microsecond.
EPOCH_MS = 1_767_225_600_000

# Runs (a command, no language) queue under this name; language ids cannot start with "@".
RUN_LANG = "@run"


def queue_name(lang: str, tag: str | None, compat: bool = False, by_hash: bool = False) -> str:
    """One queue per (language, required tag); "" is "any host".  Judge0/Piston
    jobs, and jobs that name files by hash (`stdin_sha256`, ...), have queues of
    their own so that a host of an older version, which cannot decode them,
    never claims one during a rolling upgrade: it does not know their names."""
    return f"{lang or RUN_LANG}|{tag or ''}" + (COMPAT_QUEUE if compat else "") + (HASH_QUEUE if by_hash else "")


COMPAT_QUEUE = "|compat"  # the suffix of a compat queue's name
HASH_QUEUE = "|hash"  # the suffix of the queue of jobs naming files by hash
# What a host that claims from HASH_QUEUE queues says in its heartbeat (the
# coordinator refuses such a job while no live host would take it).
BY_HASH = "by_hash"


class Keys:
    def __init__(self, name: str) -> None:
        self.prefix = "{" + name + "}"

    def _k(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    def job(self, job_id: str) -> str:
        return self._k("job", job_id)

    def queue(self, name: str) -> str:
        return self._k("q", name)

    def idem(self, key: str) -> str:  # hash: an idempotency key's job and request fingerprint
        return self._k("idem", key)

    def wake(self, name: str) -> str:
        return self._k("wake", name)

    def progress(self, job_id: str) -> str:  # pub/sub channel: a submission's TestResults (msgpack)
        return self._k("progress", job_id)

    def host(self, host_id: str) -> str:
        return self._k("host", host_id)

    @property
    def hosts(self) -> str:  # zset: host id -> last heartbeat (ms)
        return self._k("hosts")

    @property
    def drained(self) -> str:  # set of host ids; survives the hosts' restarts
        return self._k("drained")

    @property
    def leases(self) -> str:  # zset: running job id -> lease expiry (ms)
        return self._k("leases")

    @property
    def deadlines(self) -> str:  # zset: queued job id -> queue deadline (ms)
        return self._k("deadlines")

    @property
    def queues(self) -> str:  # set of queue names ever used
        return self._k("queues")

    @property
    def quarantine(self) -> str:  # zset: job id -> when it was quarantined
        return self._k("quarantine")

    @property
    def quarantine_why(self) -> str:  # hash: job id -> reason
        return self._k("quarantine", "why")

    @property
    def stats(self) -> str:  # hash of fleet-wide counters
        return self._k("stats")

    @property
    def notify(self) -> str:  # list of final job ids whose result is to be delivered (callbacks)
        return self._k("notify")

    # --- tenants (sandboxd.fleet.tenants; fleet.lua keeps them) ----------------

    @property
    def tenant_running(self) -> str:  # hash: tenant -> its jobs in flight (queued or running) in the fleet
        return self._k("tenants", "running")

    @property
    def tenant_jobs(self) -> str:  # hash: tenant -> jobs admitted (a counter)
        return self._k("tenants", "jobs")

    @property
    def tenant_cpu(self) -> str:  # hash: tenant -> CPU seconds charged (a counter)
        return self._k("tenants", "cpu")

    def tenant_day(self, day: int) -> str:  # hash: tenant -> CPU seconds of that UTC day; expires after 2 days
        return self._k("tenants", "day", str(day))

    @property
    def events(self) -> str:  # pub/sub channel: "job id\nfinal JobInfo (msgpack)"
        return self._k("events")
