"""Tenants through the fleet: a real redis-server, coordinator and host daemon.

The coordinator authenticates tenant keys on every prefix and applies their
limits; what must hold fleet-wide (jobs in flight, the day's CPU seconds)
lives in Redis, so a coordinator restart forgets none of it.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from fleet_util import Fleet, Host
from instances import inst

from sandboxd.fleet.keys import Keys
from sandboxd.tenancy import until_midnight, utc_day

ADMIN = "fleet-admin-tok"
AUTH = {"Authorization": f"Bearer {ADMIN}"}
K = Keys("sandboxd")
COORD_ENV = {"SANDBOXD_FLEET_LEASE": "2", "SANDBOXD_FLEET_HEARTBEAT": "0.5"}
HOST_ENV = {"SANDBOXD_FLEET_LEASE": "2", "SANDBOXD_FLEET_HEARTBEAT": "0.5", "SANDBOXD_DRAIN_TIMEOUT": "1"}
# > 0.2 CPU seconds on any host: burnt to its own CPU clock (a loop count took 0.199 s on a fast one)
BURN = ["python3", "-c", "import time\nwhile time.process_time() < 0.3: pass"]


class TenantFleet(Fleet):
    """Redis, one coordinator with a tenants file, one host of one box."""

    def __init__(self, home: Path) -> None:
        self.home = home
        config = home / "coordinator.toml"
        config.write_text(f'[http]\ntoken = "{ADMIN}"\n[tenants]\nfile = "{home / "tenants.json"}"\n')
        host = Host(inst("-fleet-tenants"), 1, HOST_ENV)
        super().__init__({"h": host}, COORD_ENV, config=config, headers=AUTH, ready=bool)

    def http(self, method: str, path: str, body: Any = None, **headers: str) -> tuple[int, dict[str, str], Any]:
        assert self.coord is not None
        data = None if body is None else msgspec.json.encode(body)
        req = urllib.request.Request(
            self.coord.http + path, data=data, method=method, headers={"Content-Type": "application/json", **headers}
        )
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return r.status, dict(r.headers), json.loads(r.read() or b"null")
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers), json.loads(e.read() or b"null")

    def make(self, **spec: Any) -> str:
        st, _, res = self.http("POST", "/v1/tenants", spec, **AUTH)
        assert st == 201, res
        return str(res["key"])

    def run(self, key: str, cmd: list[str] | None = None, wait: bool = True) -> tuple[int, dict[str, str], Any]:
        path = "/v1/runs" if wait else "/v1/runs?wait=false"
        return self.http("POST", path, {"cmd": cmd or ["true"]}, Authorization=f"Bearer {key}")


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TenantFleet]:
    f = TenantFleet(tmp_path_factory.mktemp("fleet-tenants"))
    yield f
    f.stop()


def test_keys_on_every_prefix_and_the_admin_api_on_the_coordinator(fleet: TenantFleet) -> None:
    key = fleet.make(name="compat", languages=["python3", "host"])
    assert fleet.http("GET", "/v1/tenants", Authorization=f"Bearer {key}")[0] == 403  # a tenant is no admin
    st, _, res = fleet.run(key)
    assert st == 200 and res["status"] == "ok", res
    assert fleet.run("sbx_not-a-key")[0] == 401
    j0 = {"source_code": "print(1)", "language_id": 71}
    st, _, res = fleet.http("POST", "/judge0/submissions?wait=true", j0, **{"X-Auth-Token": key})
    assert st in (200, 201) and res["stdout"] == "1\n", res
    assert fleet.http("POST", "/judge0/submissions?wait=true", j0, **{"X-Auth-Token": "sbx_nope"})[0] == 401
    j0c = {"source_code": "int main(){}", "language_id": 50}  # C: not this tenant's
    st, _, res = fleet.http("POST", "/judge0/submissions?wait=true", j0c, **{"X-Auth-Token": key})
    assert st == 403, res
    piston = {"language": "python3", "version": "*", "files": [{"content": "print(2)"}]}
    st, _, res = fleet.http("POST", "/piston/api/v2/execute", piston, Authorization=key)
    assert st == 200 and res["run"]["stdout"] == "2\n", res
    assert fleet.http("POST", "/piston/api/v2/execute", piston, Authorization="sbx_nope")[0] == 401
    piston_c = {"language": "c", "version": "*", "files": [{"content": "int main(){}"}]}
    assert fleet.http("POST", "/piston/api/v2/execute", piston_c, Authorization=key)[0] == 403
    st, _, metrics = 0, {}, ""
    with urllib.request.urlopen(urllib.request.Request(fleet.coord.http + "/metrics", headers=AUTH)) as r:  # type: ignore[union-attr]
        metrics = r.read().decode()
    assert 'sandboxd_tenant_jobs_total{tenant="compat"} 3.0' in metrics, metrics
    assert 'sandboxd_tenant_refused_total{reason="language",tenant="compat"} 2.0' in metrics


def test_rate_limit_answers_429_with_ratelimit_headers(fleet: TenantFleet) -> None:
    key = fleet.make(name="rated", rate=0.01, burst=2)
    first = fleet.run(key)
    assert first[0] == 200 and first[1]["RateLimit-Limit"] == "2" and first[1]["RateLimit-Remaining"] == "1"
    assert fleet.run(key)[0] == 200
    st, headers, res = fleet.run(key)
    assert st == 429 and res["error"]["code"] == "rate_limited" and "rated" in res["error"]["message"], res
    assert headers["RateLimit-Remaining"] == "0" and int(headers["RateLimit-Reset"]) > 0
    assert 50 <= int(headers["Retry-After"]) <= 101  # one token at 0.01/s
    assert fleet.run(ADMIN)[0] == 200  # the bearer token (the unnamed tenant) is not limited


def test_the_job_record_names_its_tenant_and_the_cap_counts_jobs_in_flight(fleet: TenantFleet) -> None:
    key = fleet.make(name="capped", concurrency=1, weight=3)
    st, _, res = fleet.run(key, ["sleep", "2"], wait=False)
    assert st == 202, res
    job = res["job"]
    r = fleet.redis.client()
    assert r.hmget(K.job(job), ["tenant", "weight"]) == [b"capped", b"3.0"]
    st, headers, res = fleet.run(key)
    assert st == 429 and "cap" in res["error"]["message"] and "Retry-After" in headers, res
    assert r.hget(K.tenant_running, "capped") == b"1"
    st, _, status = fleet.http("GET", "/v1/status", Authorization=f"Bearer {key}")
    assert st == 200 and set(status["tenants"]) == {"capped"} and status["tenants"]["capped"]["running"] == 1
    assert fleet.wait(job)["state"] == "done"
    assert r.hget(K.tenant_running, "capped") is None  # its place freed when the job turned final
    assert fleet.run(key)[0] == 200


def test_cpu_quota_is_kept_in_redis_across_a_coordinator_restart(fleet: TenantFleet) -> None:
    key = fleet.make(name="quota", cpu_seconds_per_day=0.2)
    st, _, res = fleet.run(key, BURN)
    assert st == 200 and res["cpu_time"] > 0.2, res
    day = K.tenant_day(utc_day(time.time()))
    r = fleet.redis.client()
    assert float(r.hget(day, "quota") or 0) >= res["cpu_time"] - 1e-6
    assert 86400 < r.ttl(day) <= 2 * 86400
    st, headers, res = fleet.run(key)
    assert st == 429 and "CPU seconds" in res["error"]["message"], res
    assert abs(int(headers["Retry-After"]) - until_midnight(time.time())) < 120
    assert headers["RateLimit-Limit"] == "0.2" and headers["RateLimit-Remaining"] == "0"
    st, _, status = fleet.http("GET", "/v1/status", **AUTH)
    assert status["tenants"]["quota"]["cpu_seconds_today"] > 0.2, status
    assert fleet.coord is not None and fleet.coord.stop() == 0
    fleet.start_coordinator()
    st, _, res = fleet.run(key)
    assert st == 429 and "CPU seconds" in res["error"]["message"], res
    assert fleet.run(ADMIN)[0] == 200


def claim_order(fleet: TenantFleet, jobs: dict[str, str]) -> list[str]:
    """The tenants of `jobs` (id -> tenant) in the order the host claimed them
    (Redis's own clock at each claim; one box: one claim at a time)."""
    r = fleet.redis.client()
    started = {j: int(r.hget(K.job(j), "started") or 0) for j in jobs}
    assert len(set(started.values())) == len(jobs), started
    return [jobs[j] for j in sorted(jobs, key=started.__getitem__)]


# Heavy queues 8 jobs, then light 4, on one box.  Weights 1:1: turns
# alternate while both have jobs (ties go to the older job); 1:2: light gets
# two turns to heavy's one.  First come, first served would give heavy's 8
# before any of light's.
FAIR_ORDERS = {
    1.0: ["heavy", "light"] * 4 + ["heavy"] * 4,
    2.0: ["heavy", "light", "light", "heavy", "light", "light"] + ["heavy"] * 6,
}


@pytest.mark.parametrize("light_weight", sorted(FAIR_ORDERS))
def test_fair_claim_order_interleaves_a_light_tenant_with_a_heavy_one(fleet: TenantFleet, light_weight: float) -> None:
    sfx = f"-{light_weight:g}"
    heavy, light = fleet.make(name="heavy" + sfx), fleet.make(name="light" + sfx, weight=light_weight)
    (host,) = fleet.http("GET", "/v1/hosts", **AUTH)[2]
    assert host["capacity"] == 1, host
    hid = urllib.parse.quote(host["id"], safe="")
    assert fleet.http("POST", f"/v1/hosts/{hid}/drain", **AUTH)[0] == 200
    jobs: dict[str, str] = {}
    try:
        for name, key, n in (("heavy", heavy, 8), ("light", light, 4)):  # heavy queues all of its jobs first
            for _ in range(n):
                st, _, res = fleet.run(key, ["sleep", "0.05"], wait=False)
                assert st == 202, res
                jobs[res["job"]] = name
    finally:
        assert fleet.http("POST", f"/v1/hosts/{hid}/undrain", **AUTH)[0] == 200
    for j in jobs:
        assert fleet.wait(j)["state"] == "done"
    assert claim_order(fleet, jobs) == FAIR_ORDERS[light_weight]


def test_a_job_of_an_older_coordinator_is_still_claimed(fleet: TenantFleet) -> None:
    """Rolling upgrade: a coordinator of the previous version enqueues with the
    script's old arguments (no tenant, no fair-share index); hosts claim it."""
    from sandboxd.fleet.keys import EPOCH_MS, queue_name
    from sandboxd.fleet.store import LUA
    from sandboxd.schema import RunRequest

    key = fleet.make(name="busy")
    st, _, res = fleet.run(key, ["sleep", "0.5"], wait=False)  # a tracked job queued alongside
    assert st == 202, res
    spec = msgspec.msgpack.encode(RunRequest(cmd=["true"]))
    queue = queue_name("", None)
    old_args = ["old-coord-job", "run", "", "", queue, spec, 0, 1.0, EPOCH_MS, 1, 0, 1000, 0, 0, "", "", ""]
    r = fleet.redis.client()
    assert r.eval(LUA, 0, "enqueue", K.prefix, *old_args)[0] == b"ok"
    assert r.hget(K.job("old-coord-job"), "fair") is None
    assert fleet.wait("old-coord-job")["state"] == "done"
    assert fleet.wait(res["job"])["state"] == "done"
