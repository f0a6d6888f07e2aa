"""The fleet for real: a redis-server, three host daemons and two coordinators.

Hosts listen on loopback ports (each its own instance: cgroups, uids, socket)
and share nothing but Redis.  Leases are short (2 s) so failures show quickly.
"""

from __future__ import annotations

import asyncio
import base64
import signal
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest
from daemon_util import CallbackSink, Daemon
from fleet_util import Coordinator, Fleet, Host, Redis, listing
from instances import inst
from sandboxd_client import AsyncClient, Client, RunRequest, Submission, SubmissionResult
from sandboxd_client import TestCase as Case  # (not Test*: pytest would collect them)
from sandboxd_client import TestResult as Result

from sandboxd.fleet.keys import Keys, queue_name
from sandboxd.fleet.store import FleetStore

POOLS = {"a": 1, "b": 2, "c": 4}  # unequal hosts: balance must follow their boxes
TAGS = {"a": '["solo"]'}
HOST_ENV = {
    "SANDBOXD_FLEET_LEASE": "2",
    "SANDBOXD_FLEET_HEARTBEAT": "0.5",
    "SANDBOXD_DRAIN_TIMEOUT": "1",
    "SANDBOXD_LOG_FORMAT": "json",
}
# Coordinators use the hosts' lease too: it is their grace after a Redis outage.
# Callbacks go to a loopback listener here; any replica may deliver one, so all
# replicas allow private targets alike.
COORD_ENV = {"SANDBOXD_FLEET_LEASE": "2", "SANDBOXD_FLEET_HEARTBEAT": "0.5", "SANDBOXD_CALLBACK_ALLOW_PRIVATE": "true"}
K = Keys("sandboxd")


def host(name: str) -> Host:
    env = {**HOST_ENV, "SANDBOXD_FLEET_HOST_ID": name}
    if name in TAGS:
        env["SANDBOXD_FLEET_TAGS"] = TAGS[name]
    return Host(inst(f"-fleet-{name}"), POOLS[name], env)


class ApiFleet(Fleet):
    """Three hosts (POOLS) and two coordinators, spoken to over HTTP."""

    def __init__(self) -> None:
        super().__init__({name: host(name) for name in POOLS}, COORD_ENV, ready=listing(set(POOLS)), replicas=2)

    def host_alive(self, name: str) -> bool:
        return self.hosts[name].proc.poll() is None


@pytest.fixture(scope="module")
def fleet() -> Iterator[ApiFleet]:
    f = ApiFleet()
    yield f
    f.stop()


@pytest.fixture(autouse=True)
def healthy(fleet: ApiFleet) -> Iterator[None]:
    """Every test starts with all hosts up, undrained and idle, both coordinators up."""
    for name in POOLS:
        if not fleet.host_alive(name):
            fleet.hosts[name].stop()
            fleet.start_host(name)
    for i, c in enumerate(fleet.coords):
        if c.proc.poll() is not None:
            c.stop()
            fleet.start_coordinator(i)
    fleet.r().delete(K.drained)
    hosts = fleet.wait_hosts(listing(set(POOLS)))
    deadline = time.monotonic() + 20
    while any(h["load"] for h in hosts):
        assert time.monotonic() < deadline, hosts
        time.sleep(0.1)
        hosts = fleet.api("GET", "/v1/hosts")[1]
    yield


def sleep_job(secs: float, **kw: Any) -> dict[str, Any]:
    return {"cmd": ["/bin/sh", "-c", f"sleep {secs}; echo done"], "limits": {"wall_time": secs + 10}, **kw}


AB = b'#include <stdio.h>\nint main(){int a,b;scanf("%d %d",&a,&b);printf("%d\\n",a+b);}\n'


def test_same_api_as_a_host_through_either_coordinator(fleet: ApiFleet) -> None:
    for i in (0, 1):
        st, res = fleet.api("POST", "/v1/runs", {"cmd": ["/bin/echo", "hi"]}, coord=i)
        assert st == 200 and res["status"] == "ok" and res["stdout"] == "aGkK", res
        sub = {
            "lang": "c",
            "source": AB,
            "tests": [{"input": b"1 2", "expected": b"3"}, {"input": b"2 2", "expected": b"5"}],
        }
        st, res = fleet.api("POST", "/v1/submissions", msgspec.to_builtins(sub), coord=i)
        assert st == 200 and res["verdict"] == "WA", res
        assert [t["verdict"] for t in res["tests"]] == ["AC", "WA"]
    # The Python client, unchanged, over the coordinator's Unix socket.
    with Client(f"unix://{fleet.coords[1].sock}") as c:
        r = c.run(RunRequest(cmd=["/bin/sh", "-c", "cat; echo x"], stdin=b"in\n"))
        assert r.status == "ok" and r.stdout == b"in\nx\n"
        assert {x["id"] for x in c.languages()} >= {"c", "python3", "java"}
    # Every finished job says which host ran it.
    job = fleet.start({"cmd": ["/bin/true"]})
    assert fleet.wait(job)["host"] in POOLS
    hosts = {h["id"]: h for h in fleet.api("GET", "/v1/hosts")[1]}
    assert {h: hosts[h]["capacity"] for h in hosts} == POOLS
    assert hosts["a"]["tags"] == ["solo"] and not hosts["a"]["drained"] and hosts["a"]["heartbeat_age"] < 2
    assert "c" in {lang["id"] for lang in hosts["b"]["languages"]}
    st, status = fleet.api("GET", "/v1/status")
    assert st == 200 and status["fleet"]["hosts"] == 3 and status["fleet"]["boxes"] == 7
    with urllib.request.urlopen(fleet.coords[0].http + "/metrics") as r:
        text = r.read().decode()
    assert 'sandboxd_fleet_boxes{host="c",state="total"} 4.0' in text
    assert 'sandboxd_fleet_jobs_total{event="done"}' in text


@pytest.mark.parametrize("transport", ["unix", "http"])
def test_progress_events_through_the_coordinator(fleet: ApiFleet, transport: str) -> None:
    # (http: Server-Sent Events, relayed from the host's pub/sub as the socket's frames are)
    tests = [Case(input=f"{i} {i}".encode(), expected=f"{2 * i}".encode()) for i in range(6)]
    tests[3].expected = b"0"
    seen: list[Result] = []
    address = f"unix://{fleet.coords[0].sock}" if transport == "unix" else fleet.coords[0].http

    async def go() -> SubmissionResult:
        async with AsyncClient(address) as c:
            return await c.submit(Submission(lang="c", source=AB, tests=tests), progress=seen.append)

    res = asyncio.run(go())
    assert [t.verdict for t in res.tests] == ["AC", "AC", "AC", "WA", "AC", "AC"]
    assert sorted(t.index for t in seen) == list(range(6)), seen  # one event per test, before the result
    assert {t.index: t.verdict for t in seen} == {t.index: t.verdict for t in res.tests}


def test_bad_input_gets_clear_errors(fleet: ApiFleet) -> None:
    st, res = fleet.api("POST", "/v1/submissions", {"lang": "cobol", "source": "", "tests": [{}]})
    assert st == 400 and "no host serves 'cobol'" in res["error"]["message"], res
    st, res = fleet.api("POST", "/v1/runs", {"cmd": ["/bin/true"], "host_tag": "contest-9"})
    assert st == 400 and "no live host carries tag 'contest-9'" in res["error"]["message"], res
    st, res = fleet.api("POST", "/v1/runs", {"cmd": []})
    assert st == 400 and "cmd" in res["error"]["message"], res
    st, res = fleet.api("POST", "/v1/runs", {"cmd": ["x"], "host_tag": "bad tag!"})
    assert st == 400 and "host_tag" in res["error"]["message"], res
    st, res = fleet.api("GET", "/v1/jobs/nope")
    assert st == 404 and res["error"]["code"] == "not_found"
    st, res = fleet.api("POST", "/v1/runs?callback_url=file:///etc/passwd", {"cmd": ["/bin/true"]})
    assert st == 400 and "callback_url" in res["error"]["message"]
    # (Judge0 and Piston through the coordinator: tests/compat/ runs all of them through a fleet.)


def test_priority_order_under_contention(fleet: ApiFleet) -> None:
    # Host a (1 box) is the only one with tag "solo": hold its box, then queue.
    blocker = fleet.start(sleep_job(1, host_tag="solo"))
    fleet.wait_state(blocker, "running")
    order = []
    for i in range(3):
        order.append(("low", i, fleet.start({"cmd": ["/bin/true"], "host_tag": "solo", "priority": 0})))
        order.append(("high", i, fleet.start({"cmd": ["/bin/true"], "host_tag": "solo", "priority": 10})))
    for _, _, job in order:
        assert fleet.wait(job)["state"] == "done"
    r = fleet.r()
    started = sorted(order, key=lambda o: int(r.hget(K.job(o[2]), "started")))
    assert [(p, i) for p, i, _ in started] == [
        ("high", 0), ("high", 1), ("high", 2), ("low", 0), ("low", 1), ("low", 2)
    ]  # fmt: skip
    assert all(fleet.wait(j)["host"] == "a" for _, _, j in order)


def test_aging_lets_old_low_priority_jobs_overtake() -> None:
    """The claim order itself, on a real Redis: effective priority is
    priority + aging x seconds waited, FIFO within equal priority."""
    red = Redis()

    async def scenario() -> list[str]:
        store = FleetStore(red.url, "aging")
        try:
            q = queue_name("", None)
            ids = []
            for name, prio in (("old-low", 0), ("mid", 5)):
                await store.enqueue(name, "run", "", "", q, b"x", prio, 100.0, 1, None, 100)
                ids.append(name)
                await asyncio.sleep(0.2)  # at 100 points/s, 0.2 s is worth 20 priority points
            await store.enqueue("new-high", "run", "", "", q, b"x", 10, 100.0, 1, None, 100)
            await store.register("h", "s", 10, {})
            got = await store.claim("h", "s", 10, 10, [(q, 0)], [(10, 10)])
            assert got is not None
            return [c.id for c in got]
        finally:
            await store.close()

    try:
        assert asyncio.run(scenario()) == ["old-low", "mid", "new-high"]
    finally:
        red.stop()


def test_balance_follows_capacity(fleet: ApiFleet) -> None:
    jobs = [fleet.start(sleep_job(0.3), coord=i % 2) for i in range(70)]
    hosts = Counter(fleet.wait(j, timeout=60)["host"] for j in jobs)
    total = sum(POOLS.values())
    shares = {h: hosts[h] / len(jobs) for h in POOLS}
    expected = {h: n / total for h, n in POOLS.items()}
    print("balance:", {h: f"{shares[h]:.2f} (capacity share {expected[h]:.2f})" for h in POOLS})
    for h in POOLS:
        assert abs(shares[h] - expected[h]) < 0.1, (shares, expected)


def test_a_job_never_waits_behind_a_busy_host(fleet: ApiFleet) -> None:
    busy = fleet.start(sleep_job(3, host_tag="solo"))
    fleet.wait_state(busy, "running")
    t0 = time.monotonic()
    res = fleet.wait(fleet.start({"cmd": ["/bin/true"]}))
    assert res["state"] == "done" and res["host"] in ("b", "c")
    assert time.monotonic() - t0 < 2.5  # not after the 3 s job
    fleet.wait(busy)


def _pin_to(fleet: ApiFleet, host: str, body: dict[str, Any]) -> str:
    """Start a job on `host` by draining the others until it runs, then undrain them."""
    others = [h for h in POOLS if h != host]
    fleet.drain(*others)
    try:
        job = fleet.start(body)
        res = fleet.wait_state(job, "running")
        assert res["host"] == host, res
        return job
    finally:
        fleet.drain(*others, on=False)


def test_host_killed_mid_job_its_job_finishes_elsewhere_once(fleet: ApiFleet) -> None:
    job = _pin_to(fleet, "b", sleep_job(1.5))
    fleet.hosts["b"].proc.kill()  # kill -9: no goodbye, the lease has to run out
    res = fleet.wait(job, timeout=30)
    assert res["state"] == "done" and res["host"] in ("a", "c"), res
    assert res["result"]["stdout"] == "ZG9uZQo="  # "done\n"
    r = fleet.r()
    assert int(r.hget(K.job(job), "attempts")) == 2
    assert int(r.hget(K.stats, "requeued")) >= 1


def test_a_job_two_hosts_ran_has_one_result(fleet: ApiFleet) -> None:
    job = _pin_to(fleet, "c", sleep_job(1))
    proc = fleet.hosts["c"].proc
    proc.send_signal(signal.SIGSTOP)  # hung, not dead: it will wake up and want to report
    try:
        first = fleet.wait(job, timeout=30)
        assert first["state"] == "done" and first["host"] in ("a", "b"), first
    finally:
        proc.send_signal(signal.SIGCONT)
    time.sleep(3)  # c resumes, finds its lease gone (or reports late and is refused)
    assert fleet.wait(job) == first
    assert int(fleet.r().hget(K.job(job), "attempts")) == 2
    log = fleet.hosts["c"].output()
    assert "lost the lease of job" in log or "not taken" in log, log[-2000:]


def test_coordinator_killed_nothing_lost(fleet: ApiFleet) -> None:
    jobs = [fleet.start(sleep_job(0.3), coord=0) for _ in range(10)]
    fleet.coords[0].proc.kill()
    for j in jobs:
        assert fleet.wait(j, coord=1)["state"] == "done"


def test_redis_restart_loses_nothing_acknowledged(fleet: ApiFleet) -> None:
    fleet.drain(*POOLS)
    jobs = [fleet.start({"cmd": ["/bin/echo", str(i)]}) for i in range(5)]
    fleet.redis.kill()
    fleet.redis.start()
    deadline = time.monotonic() + 20
    while True:  # the coordinator says "unreachable, retry" (503) until it reconnects
        st, res = fleet.api("GET", f"/v1/jobs/{jobs[0]}")
        if st == 200:
            break
        assert st == 503 and time.monotonic() < deadline, (st, res)
        time.sleep(0.2)
    assert res["state"] == "queued"
    fleet.drain(*POOLS, on=False)
    for i, j in enumerate(jobs):
        res = fleet.wait(j)
        assert res["state"] == "done" and res["result"]["stdout"] == base64.b64encode(f"{i}\n".encode()).decode()
    # Hosts re-joined on their own and take new work.
    assert fleet.wait(fleet.start({"cmd": ["/bin/true"]}))["state"] == "done"
    fleet.wait_hosts(listing(set(POOLS)))


def test_redis_outage_does_not_take_running_jobs_away(fleet: ApiFleet) -> None:
    """Redis down longer than a lease: no host could renew, so after the
    restart the hosts get one lease to come back instead of losing their jobs."""
    job = fleet.start(sleep_job(6))
    fleet.wait_state(job, "running")
    fleet.redis.kill()
    time.sleep(4)  # twice the lease
    # Not ready, and says why, as a daemon does (sandboxd.jobs.frontend).
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(fleet.coords[0].http + "/readyz", timeout=5)
    assert e.value.code == 503
    assert msgspec.json.decode(e.value.read()) == {"ready": False, "reason": "the fleet's Redis is unreachable"}
    fleet.redis.start()
    res = fleet.wait(job, timeout=30)
    assert res["state"] == "done" and res["result"]["stdout"] == "ZG9uZQo=", res
    assert int(fleet.r().hget(K.job(job), "attempts")) == 1  # ran once, not re-queued
    fleet.wait_hosts(listing(set(POOLS)))


def test_a_malformed_running_job_does_not_stop_the_reaper(fleet: ApiFleet) -> None:
    r = fleet.r()
    r.hset(K.job("broken-lease"), mapping={"state": "running", "kind": "run", "holder": "nobody"})
    r.zadd(K.leases, {"broken-lease": 0})
    res = fleet.wait("broken-lease", timeout=10)
    assert res["state"] == "failed" and "malformed job in Redis" in res["error"]["message"], res
    # Leases are still reaped: a job whose host is killed still finishes elsewhere.
    job = _pin_to(fleet, "a", sleep_job(1))
    fleet.hosts["a"].proc.kill()
    assert fleet.wait(job, timeout=30)["host"] in ("b", "c")


def test_drain_a_busy_host(fleet: ApiFleet) -> None:
    job = _pin_to(fleet, "c", sleep_job(1.5))
    fleet.drain("c")
    deadline = time.monotonic() + 3
    while True:  # load is as of the host's last heartbeat (0.5 s here)
        c = {h["id"]: h for h in fleet.api("GET", "/v1/hosts")[1]}["c"]
        if c["load"] >= 1:
            break
        assert time.monotonic() < deadline, c
        time.sleep(0.05)
    assert c["drained"]
    others = [fleet.start({"cmd": ["/bin/true"]}) for _ in range(8)]
    assert all(fleet.wait(j)["host"] in ("a", "b") for j in others)
    assert fleet.wait(job)["host"] == "c"  # what it was running finishes there
    deadline = time.monotonic() + 5
    while {h["id"]: h for h in fleet.api("GET", "/v1/hosts")[1]}["c"]["load"]:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    fleet.drain("c", on=False)
    fleet.drain("a", "b")
    assert fleet.wait(fleet.start({"cmd": ["/bin/true"]}))["host"] == "c"


def test_malformed_jobs_in_redis_are_quarantined(fleet: ApiFleet) -> None:
    r = fleet.r()
    q = queue_name("", None)
    # Written by hand: a spec that is not msgpack, a hash without a spec, and a
    # queue entry with no job at all.
    r.hset(K.job("bad-spec"), mapping={"kind": "run", "spec": b"\xc1garbage", "cost": 1, "state": "queued",
                                        "queue": q, "score": 0, "attempts": 0})  # fmt: skip
    r.hset(K.job("no-spec"), mapping={"kind": "run", "state": "queued", "queue": q, "score": 0})
    for jid in ("bad-spec", "no-spec", "ghost"):
        r.zadd(K.queue(q), {jid: -1000})
    r.lpush(K.wake(q), "1")
    for jid in ("bad-spec", "no-spec"):
        res = fleet.wait(jid)
        assert res["state"] == "failed" and res["error"]["code"] == "bad_request", res
        assert "malformed job in Redis" in res["error"]["message"], res
    deadline = time.monotonic() + 5
    while r.zscore(K.quarantine, "ghost") is None:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    why = {k.decode(): v.decode() for k, v in r.hgetall(K.quarantine_why).items()}
    assert set(why) >= {"bad-spec", "no-spec", "ghost"}, why
    assert r.zcard(K.queue(q)) == 0  # not retried: no crash loop
    assert all(fleet.host_alive(h) for h in POOLS)
    assert fleet.wait(fleet.start({"cmd": ["/bin/true"]}))["state"] == "done"


def test_cancel_wherever_the_job_is(fleet: ApiFleet) -> None:
    fleet.drain(*POOLS)
    queued = fleet.start({"cmd": ["/bin/true"]})
    st, res = fleet.api("DELETE", f"/v1/jobs/{queued}")
    assert st == 200 and res["state"] == "cancelled", res
    fleet.drain(*POOLS, on=False)
    running = fleet.start(sleep_job(20))
    fleet.wait_state(running, "running")
    t0 = time.monotonic()
    fleet.api("DELETE", f"/v1/jobs/{running}", coord=1)
    res = fleet.wait(running)
    assert res["state"] == "cancelled" and time.monotonic() - t0 < 5, res


def test_result_callbacks_through_the_coordinator_once_each(fleet: ApiFleet) -> None:
    """POSTed by one coordinator replica once Redis has the final result, whatever
    made it final: a host's result or a cancel."""
    sink = CallbackSink()
    try:
        cb = f"callback_url={sink.url}"
        st, run = fleet.api("POST", f"/v1/runs?wait=false&{cb}", {"cmd": ["/bin/echo", "hi"]})
        sub = {"lang": "c", "source": base64.b64encode(AB).decode(), "tests": [{"input": "MSAy", "expected": "Mw=="}]}
        st2, judged = fleet.api("POST", f"/v1/submissions?wait=false&{cb}", sub, coord=1)
        st3, sleeper = fleet.api("POST", f"/v1/runs?wait=false&{cb}", sleep_job(20))
        assert (st, st2, st3) == (202, 202, 202), (run, judged, sleeper)
        fleet.wait_state(sleeper["job"], "running")
        fleet.api("DELETE", f"/v1/jobs/{sleeper['job']}")
        sink.wait(3)
        time.sleep(1.5)  # a few reaper rounds of both replicas: nothing is delivered twice
        got = [msgspec.json.decode(body) for _, body in sink.got]
        by_id = {g["job"]: g for g in got}
        assert len(got) == 3 and set(by_id) == {run["job"], judged["job"], sleeper["job"]}, got
        r = by_id[run["job"]]
        assert r["state"] == "done" and base64.b64decode(r["result"]["stdout"]) == b"hi\n" and r["host"] in POOLS
        assert r == fleet.wait(run["job"])  # what a reader sees, times included
        assert by_id[judged["job"]]["result"]["verdict"] == "AC"
        assert by_id[sleeper["job"]]["state"] == "cancelled"
    finally:
        sink.close()


def test_queue_deadline_and_bounded_depth(fleet: ApiFleet) -> None:
    fleet.drain(*POOLS)
    late = fleet.start({"cmd": ["/bin/true"], "queue_deadline": 0.3})
    res = fleet.wait(late, timeout=10)
    assert res["state"] == "failed" and res["error"]["code"] == "queue_deadline", res
    small = Coordinator(fleet.redis.url, env={**COORD_ENV, "SANDBOXD_FLEET_QUEUE_DEPTH": "3"})
    try:
        fleet.coords.append(small)
        held = [fleet.start({"cmd": ["/bin/true"], "priority": 7}, coord=2) for _ in range(3)]
        st, res = fleet.api("POST", "/v1/runs?wait=false", {"cmd": ["/bin/true"]}, coord=2)
        assert st == 429 and res["error"]["code"] == "queue_full", res
        # Counted as a daemon counts it (sandboxd.jobs.frontend), on the refusing replica.
        with urllib.request.urlopen(small.http + "/metrics") as r:
            assert 'sandboxd_rejections_total{reason="queue_full"} 1.0' in r.read().decode()
        for j in held:
            fleet.api("DELETE", f"/v1/jobs/{j}")
    finally:
        fleet.coords.remove(small)
        small.stop()


def test_sigterm_host_hands_back_its_jobs(fleet: ApiFleet) -> None:
    job = _pin_to(fleet, "b", sleep_job(4))
    t0 = time.monotonic()
    assert fleet.hosts["b"].stop() == 0  # drain_timeout is 1 s: it hands the job back
    assert time.monotonic() - t0 < 10
    assert "b" not in {h["id"] for h in fleet.api("GET", "/v1/hosts")[1]}  # left the index at once
    res = fleet.wait(job, timeout=30)
    assert res["state"] == "done" and res["host"] in ("a", "c"), res
    assert int(fleet.r().hget(K.job(job), "attempts")) == 1  # a hand-back is not a failure
    assert "handed job" in (fleet.hosts["b"].dir / "log").read_text()


def test_reserved_host_takes_only_its_tag(fleet: ApiFleet) -> None:
    env = {
        **HOST_ENV,
        "SANDBOXD_FLEET": fleet.redis.url,
        "SANDBOXD_FLEET_HOST_ID": "r",
        "SANDBOXD_FLEET_TAGS": '["contest"]',
        "SANDBOXD_FLEET_ONLY_TAGGED": "true",
    }
    reserved = Daemon(inst("-fleet-r"), pool_size=1, env=env)
    try:
        fleet.wait_hosts(listing({*POOLS, "r"}))
        fleet.drain(*POOLS)
        untagged = fleet.start({"cmd": ["/bin/true"]})
        tagged = fleet.start({"cmd": ["/bin/true"], "host_tag": "contest"})
        assert fleet.wait(tagged)["host"] == "r"
        time.sleep(1.5)  # r polls every second: it must still leave the untagged job alone
        assert fleet.api("GET", f"/v1/jobs/{untagged}")[1]["state"] == "queued"
        fleet.drain(*POOLS, on=False)
        assert fleet.wait(untagged)["host"] in POOLS
    finally:
        reserved.stop()
