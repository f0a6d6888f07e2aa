"""What a coordinator hears from Redis: final results for its waiting clients
and the per-test progress of submissions a client listens to (pub/sub), and
the fleet-wide numbers of /metrics (read at scrape time).

Pub/sub is a fast path only: a waiter also polls the job, so a message lost
in a reconnect delays a reply, never loses it.  (Split from coordinator.py,
which keeps admission, jobs and fleet state.)
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import Any

import msgspec
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from sandboxd.fleet.outage import Backoff, OutageLog
from sandboxd.fleet.store import FleetStore
from sandboxd.rates import DrainRate
from sandboxd.schema import JobInfo, TestResult


class Events:
    def __init__(self, store: FleetStore, warn: OutageLog) -> None:
        self.store = store
        self._warn = warn
        self.waiters: dict[str, list[asyncio.Future[JobInfo]]] = {}
        self.relays: dict[str, tuple[asyncio.Task[None], asyncio.Event]] = {}
        self.drained = DrainRate()  # results published per second, fleet-wide: Retry-After

    @contextlib.contextmanager
    def waiter(self, job_id: str) -> Iterator[asyncio.Future[JobInfo]]:
        """A future the job's published final JobInfo resolves (if this replica hears it)."""
        fut: asyncio.Future[JobInfo] = asyncio.get_running_loop().create_future()
        self.waiters.setdefault(job_id, []).append(fut)
        try:
            yield fut
        finally:
            futs = self.waiters.get(job_id, [])
            with contextlib.suppress(ValueError):
                futs.remove(fut)
            if not futs:
                self.waiters.pop(job_id, None)
            fut.cancel()

    async def listen(self) -> None:
        """Results arrive on one channel for the whole fleet; resolve the waiters of this replica."""
        backoff = Backoff(0.1)
        while True:
            pubsub = self.store.redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.store.keys.events)
                backoff.reset()
                while True:
                    msg = await pubsub.get_message(timeout=5.0)
                    if msg is not None and msg.get("type") == "message":
                        self._resolve(bytes(msg["data"]))
            except asyncio.CancelledError:
                raise
            except Exception as e:
                self._warn("result subscription", e)
                await backoff.wait()
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]

    def _resolve(self, data: bytes) -> None:
        jid, _, raw = data.partition(b"\n")
        self.drained.note()
        futs = self.waiters.get(jid.decode())
        if not futs:
            return
        try:
            info = self.store.decode_info(raw)
        except msgspec.DecodeError:
            return  # the waiter's poll reads it and reports
        for f in futs:
            if not f.done():
                f.set_result(info)

    async def relay(
        self, jid: str, progress: Callable[[TestResult], None], is_final: Callable[[], Awaitable[bool]]
    ) -> None:
        """Pass a submission's test events (published by its host) to `progress`
        until the job is final.  A pub/sub connection of its own per listening
        client: only clients that ask for progress pay for it."""
        pubsub = self.store.redis.pubsub(ignore_subscribe_messages=True)
        await pubsub.subscribe(self.store.keys.progress(jid))
        stop = asyncio.Event()

        async def relay() -> None:
            try:
                while True:
                    msg = await pubsub.get_message(timeout=0.2 if stop.is_set() else 1.0)
                    if msg is not None and msg.get("type") == "message":
                        with contextlib.suppress(msgspec.DecodeError, msgspec.ValidationError):
                            progress(self.store.decode_test(msg["data"]))
                        continue
                    if stop.is_set():
                        return  # final, and nothing more in flight
                    if msg is None and await is_final():
                        stop.set()  # (no waiter told us: drain what is left, then stop)
            except Exception as e:
                self._warn("progress relay", e)
            finally:
                self.relays.pop(jid, None)
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]

        self.relays[jid] = (asyncio.ensure_future(relay()), stop)

    def stop_relay(self, jid: str) -> None:
        relay = self.relays.get(jid)
        if relay is not None:
            relay[1].set()

    def tasks(self) -> list[asyncio.Task[None]]:
        return [t for t, _ in self.relays.values()]


class Snapshot(Collector):
    """Fleet-wide numbers read from Redis at scrape time, so every replica reports the same."""

    def __init__(self) -> None:
        self.data: dict[str, Any] = {}

    def collect(self) -> Iterable[Metric]:
        d = self.data
        if not d:
            return
        hosts = GaugeMetricFamily("sandboxd_fleet_hosts", "Hosts with a live entry", labels=["state"])
        for state in ("live", "drained"):
            hosts.add_metric([state], sum(1 for h in d["hosts"] if h["drained"] == (state == "drained")))
        yield hosts
        cap = GaugeMetricFamily("sandboxd_fleet_boxes", "Boxes of live hosts", labels=["host", "state"])
        for h in d["hosts"]:
            cap.add_metric([h["id"], "total"], float(h.get("capacity", 0)))
            cap.add_metric([h["id"], "busy"], float(h.get("load", 0)))
        yield cap
        q = GaugeMetricFamily("sandboxd_fleet_queue_depth", "Jobs waiting per fleet queue", labels=["queue"])
        for name, n in d["queues"].items():
            q.add_metric([name], n)
        yield q
        c = CounterMetricFamily("sandboxd_fleet_jobs", "Fleet job events (all coordinators)", labels=["event"])
        for event, n in sorted(d["stats"].items()):
            c.add_metric([event], n)
        yield c
