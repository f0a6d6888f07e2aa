"""sandboxd.jobs.tenants without a daemon: each limit's arithmetic, in order."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from sandboxd.errors import ServiceError
from sandboxd.jobs.tenants import CALLER, Caller, Tenants
from sandboxd.schema import RunResult
from sandboxd.tenancy import DAY, Tenant, until_midnight


@pytest.fixture(autouse=True)
def _no_caller_leaks() -> Iterator[None]:
    bound = CALLER.set(None)
    yield
    CALLER.reset(bound)


def tenants(tmp_path: Path, **spec: object) -> tuple[Tenants, str]:
    t = Tenants(tmp_path / "tenants.json")
    key = t.create(Tenant(name="t", **spec))  # type: ignore[arg-type]
    st = t.by_key(key)
    assert st is not None
    CALLER.set(Caller(st))
    return t, key


def refused(t: Tenants, lang: str = "python3") -> ServiceError:
    with pytest.raises(ServiceError) as e:
        t.admit(lang, 0)
    return e.value


def test_priority_is_clamped_to_the_tenants_maximum(tmp_path: Path) -> None:
    t, _ = tenants(tmp_path, max_priority=5)
    assert t.admit("python3", 50)[1] == 5
    assert t.admit("python3", -3)[1] == -3


def test_concurrency_cap_frees_a_place_when_a_job_ends(tmp_path: Path) -> None:
    t, _ = tenants(tmp_path, concurrency=2)
    a, _ = t.admit("c", 0)
    t.admit("c", 0)
    assert refused(t).err.code == "rate_limited"
    a.close()
    a.close()  # (idempotent: one place back, not two)
    t.admit("c", 0)
    assert refused(t).err.code == "rate_limited"


def test_cpu_quota_charges_results_and_resets_with_the_day(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    now = 20000 * DAY + 3600.0
    monkeypatch.setattr("sandboxd.jobs.tenants.time.time", lambda: now)
    t, key = tenants(tmp_path, cpu_seconds_per_day=1.0)
    c, _ = t.admit("c", 0)
    c.close(RunResult(status="ok", cpu_time=0.6))
    c, _ = t.admit("c", 0)  # 0.6 of 1.0 used: still in
    c.close(RunResult(status="ok", cpu_time=0.6))
    e = refused(t)
    assert e.err.code == "rate_limited" and e.err.retry_after == pytest.approx(until_midnight(now))
    # Persisted: a new Tenants (a restarted daemon) reads the day's use back.
    again = Tenants(tmp_path / "tenants.json")
    st = again.by_key(key)
    assert st is not None
    CALLER.set(Caller(st))
    assert refused(again).err.code == "rate_limited"
    now += DAY  # the next UTC day
    again.admit("c", 0)


def test_languages_are_checked_before_any_limit_is_spent(tmp_path: Path) -> None:
    t, _ = tenants(tmp_path, languages=["c"], rate=0.001, burst=1)
    e = refused(t, "python3")
    assert e.err.code == "forbidden" and "'python3'" in str(e) and "allowed: c" in str(e)
    t.admit("c", 0)  # the refused request took no token
    assert refused(t, "c").err.code == "rate_limited"


def test_the_unnamed_tenant_has_no_limits(tmp_path: Path) -> None:
    t, _ = tenants(tmp_path, concurrency=1)
    CALLER.set(Caller(admin=True))
    for _ in range(5):
        charge, prio = t.admit("", 1000)
        assert charge.name == "" and prio == 1000


def test_a_bad_tenants_file_names_the_file_and_the_field(tmp_path: Path) -> None:
    f = tmp_path / "tenants.json"
    f.write_text('{"tenants": [{"name": "ok", "weight": -1}]}')
    with pytest.raises(ValueError, match=r"tenants\.json.*weight"):
        Tenants(f)
