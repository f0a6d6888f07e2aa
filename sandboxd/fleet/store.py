"""Typed access to the fleet's state in Redis: one method per atomic operation.

Every state change is one call of sandboxd/data/fleet.lua (atomic on the
server, with Redis's clock); reads are plain commands.  redis-py's Script
reloads the script by itself when a restarted Redis has forgotten it.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from importlib import resources
from typing import Any, Literal, TypeVar, cast

import msgspec
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from sandboxd.config import FLEET, JOBS
from sandboxd.fleet.keys import EPOCH_MS, Keys
from sandboxd.schema import Error, JobInfo, TestResult

log = logging.getLogger(__name__)
LUA = resources.files("sandboxd").joinpath("data/fleet.lua").read_text()

_info_dec = msgspec.msgpack.Decoder(JobInfo)
_test_dec = msgspec.msgpack.Decoder(TestResult)
BLOCK_MAX = 5.0  # seconds: the longest BLPOP a host makes
_enc = msgspec.msgpack.Encoder()


T = TypeVar("T")


# Jobs read per fleet queue to count its priorities (the dashboard's, polled every second).
PRIORITY_SAMPLE = 1000


def _aw(x: Awaitable[T] | T) -> Awaitable[T]:
    # redis-py types each command as sync-or-async; on redis.asyncio they are awaitables.
    return cast(Awaitable[T], x)


def _json(v: Any) -> str:
    return msgspec.json.encode(v).decode()


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


@dataclass
class Claimed:
    id: str
    kind: str
    spec: bytes
    attempt: int
    deadline_left: float | None  # seconds of queue deadline left, None if none
    cost: int
    pool: int  # index into the pools the claim was made for
    progress: bool = False  # publish each test's result (a client is listening)
    tenant: str = ""  # whose job ("": the unnamed tenant), for the host's fair share and metrics
    weight: float = 1.0  # its tenant's fair-share weight


@dataclass
class TenantLimits:
    """What the enqueue script checks of a tenant fleet-wide (sandboxd.fleet.tenants)."""

    name: str
    weight: float
    concurrency: int  # its jobs in flight at once; 0: unlimited
    cpu_quota: float  # CPU seconds per UTC day; 0: unlimited


@dataclass
class TenantUsage:
    """A tenant's fleet-wide figures, as Redis keeps them."""

    running: int = 0
    jobs: int = 0
    cpu_seconds: float = 0.0
    cpu_today: float = 0.0


@dataclass
class Beat:
    drained: bool
    cancel: list[str]
    lost: list[str]


class Unregistered(Exception):
    """This host's entry is gone from Redis (expired, or Redis lost it): register again."""


class Displaced(Exception):
    """Another process registered the same host id: this one must stop taking work."""


class FleetStore:
    def __init__(self, url: str, prefix: str = FLEET.prefix, results_ttl: float = JOBS.results_ttl) -> None:
        # A socket timeout, so a half-open connection (host powered off, moved
        # VIP) fails in seconds instead of when the kernel gives up.
        opts: dict[str, Any] = {"socket_connect_timeout": 5, "socket_keepalive": True, "health_check_interval": 10}
        self.redis: aioredis.Redis = aioredis.Redis.from_url(url, socket_timeout=10, **opts)
        # Hosts block in BLPOP for wake-ups on a client of their own, whose
        # timeout outlasts the longest BLPOP.
        self.blocking: aioredis.Redis = aioredis.Redis.from_url(url, socket_timeout=BLOCK_MAX + 10, **opts)
        self.url = url
        self.keys = Keys(prefix)
        self.ttl = max(1, round(results_ttl))
        self._script = self.redis.register_script(LUA)

    async def close(self) -> None:
        for r in (self.redis, self.blocking):
            with contextlib.suppress(RedisError, OSError):
                await r.aclose()

    async def _call(self, op: str, *args: Any) -> Any:
        return await self._script(keys=[], args=[op, self.keys.prefix, *args])

    async def ping(self) -> bool:
        try:
            return bool(await self.redis.ping())
        except (RedisError, OSError):
            return False

    # --- coordinator ------------------------------------------------------

    async def enqueue(
        self,
        job_id: str,
        kind: str,
        lang: str,
        tag: str,
        queue: str,
        spec: bytes,
        priority: int,
        aging: float,
        cost: int,
        deadline: float | None,
        depth: int,
        progress: bool = False,
        notify: bool = False,
        callback: str = "",
        idem: str = "",
        fingerprint: str = "",
        tenant: TenantLimits | None = None,
    ) -> tuple[str, str]:
        """notify: queue the job's id for delivery once final (callback: a native
        job's URL; a Judge0 job's is in its spec).  idem: an idempotency key,
        bound to the job in the same script.  Returns ('ok', enqueued at),
        ('full', depth), ('exists', ''), ('dup' | 'conflict', the key's job), or
        the tenant's limits: ('quota', CPU seconds used today), ('busy', its jobs in flight)."""
        dl = 0 if deadline is None else max(1, round(deadline * 1000))
        r = await self._call(
            "enqueue",
            *(job_id, kind, lang, tag, queue, spec, priority, aging, EPOCH_MS, cost, dl, depth),
            *(int(progress), int(notify or bool(callback)), callback, idem, fingerprint),
            *(() if tenant is None else (tenant.name, repr(tenant.weight), tenant.concurrency, repr(tenant.cpu_quota))),
        )
        return _s(r[0]), _s(r[1]) if len(r) > 1 else ""

    async def keyed(self, idem: str) -> tuple[str, str] | None:
        """(job id, fingerprint) an idempotency key is bound to, if its job still exists."""
        jid, fp = await _aw(self.redis.hmget(self.keys.idem(idem), ["job", "fp"]))
        if jid is None or not await _aw(self.redis.exists(self.keys.job(_s(jid)))):
            return None
        return _s(jid), _s(fp or b"")

    async def cancel(self, job_id: str) -> str:
        return _s(await self._call("cancel", job_id, self.ttl))

    async def job(self, job_id: str, spec: bool = False) -> dict[str, bytes] | None:
        """The fields a reader needs; the spec (which may be large) and the
        callback URL only if asked."""
        names = ["state", "kind", "info", "host", "enq", "finished", *(["spec", "callback"] if spec else [])]
        vals = await _aw(self.redis.hmget(self.keys.job(job_id), names))
        if vals[0] is None:
            return None
        return dict(zip(names, vals, strict=True))

    async def notifications(self, n: int) -> list[str]:
        """Up to n final job ids whose result is to be delivered; each is handed to
        one caller (at most once: a caller that dies with one loses it)."""
        got = await _aw(self.redis.lpop(self.keys.notify, n))
        return [_s(x) for x in got or []]

    async def times(self, job_id: str) -> tuple[bytes | None, bytes | None]:
        """(enqueued, finished) in Redis's milliseconds."""
        enq, finished = await _aw(self.redis.hmget(self.keys.job(job_id), ["enq", "finished"]))
        return enq, finished

    async def forget(self, job_id: str) -> Literal["ok", "missing", "pending"]:
        """'ok' (dropped), 'missing', or 'pending' (not final: kept)."""
        r = _s(await self._call("forget", job_id))
        if r not in ("ok", "missing", "pending"):
            raise ValueError(f"forget: unexpected answer {r!r} from the fleet script")
        return r  # type: ignore[return-value]

    @staticmethod
    def decode_info(data: bytes) -> JobInfo:
        return _info_dec.decode(data)

    async def reap(self, max_attempts: int, lease: float, limit: int = 500) -> tuple[int, int, int]:
        r = await self._call("reap", max_attempts, self.ttl, limit, round(lease * 1000))
        return int(r[0]), int(r[1]), int(r[2])

    async def hosts(self, definitions: bool = False, series: bool = False) -> list[dict[str, Any]]:
        """Every host with an entry (the entry expires a few leases after its last heartbeat).
        Its language definitions (long; for the compat APIs) and its run-time series
        (for the dashboard) only if asked."""
        skip = {"session", "joined", "heartbeat"}
        skip |= set() if definitions else {"definitions"}
        skip |= set() if series else {"series"}
        ids = [_s(h) for h in await _aw(self.redis.zrange(self.keys.hosts, 0, -1))]
        drained = {_s(h) for h in await _aw(self.redis.smembers(self.keys.drained))}
        pipe = self.redis.pipeline(transaction=False)
        for h in ids:
            pipe.hgetall(self.keys.host(h))
        out = []
        now = time.time() * 1000
        for h, raw in zip(ids, await pipe.execute(), strict=True):
            if not raw:
                continue
            d = {_s(k): _s(v) for k, v in raw.items()}
            entry: dict[str, Any] = {"id": h, "drained": h in drained}
            for k, v in d.items():
                if k not in skip:
                    try:
                        entry[k] = msgspec.json.decode(v)
                    except msgspec.DecodeError:
                        entry[k] = v  # written by hand or by another version: show it as it is
            hb = float(d.get("heartbeat", 0))
            entry["heartbeat"] = hb / 1000
            entry["heartbeat_age"] = round(max(0.0, now - hb) / 1000, 3)
            out.append(entry)
        return out

    async def set_drained(self, host_id: str, drained: bool) -> None:
        if drained:
            await _aw(self.redis.sadd(self.keys.drained, host_id))
        else:
            await _aw(self.redis.srem(self.keys.drained, host_id))

    async def queue_depths(self) -> dict[str, int]:
        names = sorted(_s(q) for q in await _aw(self.redis.smembers(self.keys.queues)))
        pipe = self.redis.pipeline(transaction=False)
        for q in names:
            pipe.zcard(self.keys.queue(q))
        return dict(zip(names, (int(n) for n in await pipe.execute()), strict=True))

    async def tenant_running(self, name: str) -> int:
        """A tenant's jobs in flight fleet-wide (the enqueue script's count)."""
        return int(await _aw(self.redis.hget(self.keys.tenant_running, name)) or 0)

    async def tenant_usage(self, day: int) -> dict[str, TenantUsage]:
        """Every tenant's fleet-wide figures (of UTC day `day` for CPU today)."""
        k = self.keys
        pipe = self.redis.pipeline(transaction=False)
        for name in (k.tenant_running, k.tenant_jobs, k.tenant_cpu, k.tenant_day(day)):
            pipe.hgetall(name)
        running, jobs, cpu, today = await pipe.execute()
        out: dict[str, TenantUsage] = {}
        for field, raw, conv in (("running", running, int), ("jobs", jobs, int)):
            for t, v in raw.items():
                setattr(out.setdefault(_s(t), TenantUsage()), field, conv(v))
        for field, raw in (("cpu_seconds", cpu), ("cpu_today", today)):
            for t, v in raw.items():
                setattr(out.setdefault(_s(t), TenantUsage()), field, float(v))
        return out

    async def queue_priorities(self, sample: int = PRIORITY_SAMPLE) -> dict[str, dict[int, int]]:
        """Waiting jobs per priority of each fleet queue, from at most `sample` jobs at
        the head of each (a queue's order is one score of priority and age: the
        priority is in each job's hash).  Bounded: one pipelined read per queue."""
        names = sorted(_s(q) for q in await _aw(self.redis.smembers(self.keys.queues)))
        out: dict[str, dict[int, int]] = {}
        for q in names:
            ids = await _aw(self.redis.zrange(self.keys.queue(q), 0, sample - 1))
            if not ids:
                continue
            pipe = self.redis.pipeline(transaction=False)
            for jid in ids:
                pipe.hget(self.keys.job(_s(jid)), "prio")
            counts: dict[int, int] = {}
            for prio in await pipe.execute():
                with contextlib.suppress(TypeError, ValueError):  # (a job gone meanwhile, or malformed)
                    counts[int(prio)] = counts.get(int(prio), 0) + 1
            out[q] = counts
        return out

    async def stats(self) -> dict[str, int]:
        return {_s(k): int(v) for k, v in (await _aw(self.redis.hgetall(self.keys.stats))).items()}

    async def quarantined(self) -> dict[str, str]:
        return {_s(k): _s(v) for k, v in (await _aw(self.redis.hgetall(self.keys.quarantine_why))).items()}

    # --- hosts ------------------------------------------------------------

    def _ttl_for(self, lease: float) -> int:
        # A host entry outlives a few missed heartbeats, then vanishes from /v1/hosts.
        return max(2, round(3 * lease))

    async def register(self, host_id: str, session: str, lease: float, fields: dict[str, Any]) -> bool:
        """Returns whether the host is drained (drains survive restarts).  Field
        values are stored as JSON and read back typed by hosts()."""
        args: list[Any] = [host_id, session, self._ttl_for(lease)]
        for k, v in fields.items():
            args += [k, _json(v)]
        r = await self._call("register", *args)
        prev = _s(r[0])
        if prev and prev != session:
            log.info("fleet: took over host id %s from an earlier process", host_id)
        return bool(int(r[1]))

    async def heartbeat(
        self, host_id: str, session: str, lease: float, fields: dict[str, Any], job_ids: list[str]
    ) -> Beat:
        args: list[Any] = [host_id, session, round(lease * 1000), self._ttl_for(lease), len(fields)]
        for k, v in fields.items():
            args += [k, _json(v)]
        r = [_s(x) for x in await self._call("heartbeat", *args, *job_ids)]
        self._session_check(r[0])
        beat = Beat(r[0] == "1", [], [])
        for item in r[1:]:
            what, _, jid = item.partition(":")
            (beat.cancel if what == "cancel" else beat.lost).append(jid)
        return beat

    @staticmethod
    def _session_check(first: str) -> None:
        if first == "unregistered":
            raise Unregistered()
        if first == "displaced":
            raise Displaced()

    async def claim(
        self,
        host_id: str,
        session: str,
        lease: float,
        max_n: int,
        queues: list[tuple[str, int]],
        pools: list[tuple[int, int]],
    ) -> list[Claimed] | None:
        """Up to max_n jobs; None if the host is drained."""
        args: list[Any] = [host_id, session, round(lease * 1000), max_n, self.ttl, len(queues)]
        for name, pool in queues:
            args += [name, pool + 1]  # Lua tables count from 1
        args.append(len(pools))
        for free, cap in pools:
            args += [free, cap]
        r = await self._call("claim", *args)
        head = _s(r[0])
        if head == "drained":
            return None
        self._session_check(head)
        out = []
        for i in range(1, len(r), 10):
            left = int(r[i + 4])
            out.append(
                Claimed(
                    id=_s(r[i]),
                    kind=_s(r[i + 1]),
                    spec=bytes(r[i + 2]),
                    attempt=int(r[i + 3]),
                    deadline_left=None if left < 0 else left / 1000,
                    cost=int(r[i + 5]),
                    pool=int(r[i + 6]) - 1,
                    progress=bool(int(r[i + 7])),
                    tenant=_s(r[i + 8]),
                    weight=float(r[i + 9]),
                )
            )
        return out

    async def wait_for_work(self, queues: list[str], timeout: float) -> str | None:
        """Block until a wake-up token for one of these queues (or the timeout);
        returns the queue whose token it took."""
        if not queues:
            return None
        keys = {self.keys.wake(q): q for q in queues}
        r = await _aw(self.blocking.blpop(list(keys), timeout=min(timeout, BLOCK_MAX)))  # type: ignore[arg-type]  # Redis >= 6 takes fractions
        return None if r is None else keys[_s(r[0])]

    async def rewake(self, queue: str) -> None:
        """Put back a token this host took but cannot use (its boxes filled up meanwhile)."""
        await _aw(self.redis.lpush(self.keys.wake(queue), "1"))

    async def complete(
        self, job_id: str, session: str, attempt: int, info: JobInfo, host_id: str, cpu_seconds: float = 0.0
    ) -> str:
        """cpu_seconds: what the job's result reports, charged to its tenant's daily quota."""
        data = _enc.encode(info)
        args = (job_id, session, attempt, data, info.state, self.ttl, host_id, repr(cpu_seconds))
        return _s(await self._call("complete", *args))

    async def bill(self, tenant: str, cpu_seconds: float) -> None:
        """A live session's CPU seconds to its tenant's daily quota (a session is
        not a fleet job: no complete script charges it)."""
        await self._call("bill", tenant, repr(cpu_seconds))

    async def tenant_cpu_today(self, name: str, day: int) -> float:
        """A tenant's CPU seconds of UTC day `day` (what the enqueue script checks its quota against)."""
        raw = await _aw(self.redis.hget(self.keys.tenant_day(day), name))
        return float(raw or 0.0)

    async def publish_progress(self, job_id: str, test: TestResult) -> None:
        await _aw(self.redis.publish(self.keys.progress(job_id), _enc.encode(test)))

    @staticmethod
    def decode_test(data: bytes) -> TestResult:
        return _test_dec.decode(data)

    async def quarantine(self, job_id: str, kind: str, why: str) -> str:
        info = JobInfo(
            job_id,
            "submission" if kind == "submission" else "run",
            "failed",
            error=Error("bad_request", f"malformed job in Redis, quarantined: {why}"),
        )
        return _s(await self._call("quarantine", job_id, _enc.encode(info), self.ttl, why))

    async def release(self, job_id: str, session: str) -> str:
        return _s(await self._call("release", job_id, session, self.ttl))

    async def leave(self, host_id: str, session: str) -> None:
        await self._call("leave", host_id, session)
