"""The one error table (sandboxd.errors), the CE/IE rule (sandboxd.judging.judge)
and the operations' shared entry checks (sandboxd.jobs.frontend): pure, no root."""

from __future__ import annotations

import asyncio
from typing import get_args

import pytest

from sandboxd import errors
from sandboxd.jobs.frontend import Keyed, Operations, check_idempotency_key, conflict, keyed
from sandboxd.jobs.metrics import FrontendMetrics
from sandboxd.judging.judge import compile_failed, compile_verdict
from sandboxd.schema import (
    STATUSES,
    ErrorCode,
    JobInfo,
    RunRequest,
    RunResult,
    SchemaError,
    Submission,
    TestCase,
)

# The wire contract (README "HTTP API", docs/protocol.md): changing one breaks clients.
NATIVE_STATUS = {
    "bad_request": 400,
    "unauthorized": 401,
    "forbidden": 403,
    "rate_limited": 429,
    "not_found": 404,
    "queue_full": 429,
    "cancelled": 409,
    "conflict": 422,
    "too_large": 413,
    "internal": 500,
    "draining": 503,
    "queue_deadline": 504,
}


def test_every_wire_code_has_one_entry_and_its_native_status() -> None:
    assert set(errors.CODES) == set(get_args(ErrorCode))
    assert {c: errors.http_status(c) for c in errors.CODES} == NATIVE_STATUS


def test_a_code_this_version_does_not_know_is_a_500() -> None:
    assert errors.http_status("from_a_newer_peer") == 500


def test_only_refusals_worth_retrying_default_a_retry_after() -> None:
    retryable = {c for c, e in errors.CODES.items() if e.retry_after is not None}
    assert retryable == {"queue_full", "rate_limited", "draining"}
    assert errors.make("draining", "stopping").retry_after == errors.RETRY_AFTER
    assert errors.make("queue_full", "full", 7.5).retry_after == 7.5  # the raiser's estimate wins
    assert errors.make("not_found", "no job").retry_after is None


def test_default_messages_fill_in_only_what_is_not_said() -> None:
    assert errors.make("cancelled").message == "cancelled"
    assert errors.make("internal", "the store is gone").message == "the store is gone"
    assert all(e.message for e in errors.CODES.values())


def test_retry_after_header_is_whole_seconds_at_least_one() -> None:
    assert errors.retry_after_header(errors.make("queue_full", "x", 0.2)) == {"Retry-After": "1"}
    assert errors.retry_after_header(errors.make("queue_full", "x", 2.6)) == {"Retry-After": "3"}
    assert errors.retry_after_header(errors.make("bad_request", "x")) is None


def test_as_error_maps_what_operations_raise() -> None:
    err = errors.as_error(SchemaError("limits.memory: above the maximum"))
    assert err is not None and err.code == "bad_request" and err.message == "limits.memory: above the maximum"
    own = errors.error("conflict", "taken")
    assert errors.as_error(own) is own.err
    assert errors.as_error(RuntimeError("a bug")) is None  # the transport's "internal", logged


# --- the CE/IE rule ----------------------------------------------------------


def test_a_compile_the_system_failed_is_ie_every_other_failure_ce() -> None:
    assert compile_verdict(RunResult(status="internal_error", message="the box failed")) == "IE"
    for status in set(STATUSES) - {"ok", "internal_error"}:
        assert compile_verdict(RunResult(status=status)) == "CE", status  # type: ignore[arg-type]


def test_compile_failed_keeps_the_compile_and_its_message() -> None:
    c = RunResult(status="nonzero_exit", exit_code=1, stderr=b"x.c:1: error", message="")
    res = compile_failed(c)
    assert res.verdict == "CE" and res.compile is c and not res.tests
    res = compile_failed(RunResult(status="internal_error", message="agent died"))
    assert res.verdict == "IE" and res.message == "agent died"


# --- the shared entry checks --------------------------------------------------


def test_idempotency_keys() -> None:
    assert check_idempotency_key(None) is None
    assert check_idempotency_key("order-1") == "order-1"
    for bad in ("", "has space", "x" * 256, "é"):
        with pytest.raises(errors.ServiceError) as e:
            check_idempotency_key(bad, "Idempotency-Key header")
        assert e.value.err.code == "bad_request" and e.value.err.message.startswith("Idempotency-Key header:")


def test_a_key_is_bound_to_the_request() -> None:
    run = RunRequest(cmd=["/bin/true"])
    assert keyed(None, "run", run) is None
    k = keyed("k", "run", run)
    assert isinstance(k, Keyed) and k == keyed("k", "run", RunRequest(cmd=["/bin/true"]))
    assert k != keyed("k", "run", RunRequest(cmd=["/bin/false"]))
    assert k != keyed("k", "run", run, "https://example.com/cb")  # (the callback is part of the request)
    e = conflict("order-1", "job42").err
    assert e.code == "conflict" and "'order-1'" in e.message and "job42" in e.message and "Idempotency-Key" in e.message


class _Recorder(Operations):
    """A back end that takes every job: what reaches it passed the entry checks."""

    def __init__(self) -> None:
        super().__init__(FrontendMetrics(), callback_allow_private=False)
        self.got: list[tuple[object, str | None]] = []

    async def _start_run(self, req: RunRequest, callback_url: str | None, key: str | None, waited: bool) -> JobInfo:
        self.refuse_if_draining()
        self.got.append((req, key))
        return JobInfo("j1", "run", "queued")

    async def _start_submission(
        self, sub: Submission, progress: object, cb: str | None, key: str | None, waited: bool
    ) -> JobInfo:
        if sub.lang != "c":
            raise SchemaError(f"lang: {sub.lang!r} is not served here")
        self.got.append((sub, key))
        return JobInfo("j2", "submission", "queued")

    async def _refresh_metrics(self) -> None:
        pass

    def unready_reason(self) -> str | None:
        return "draining" if self.draining else None


def _code(coro: object) -> str:
    with pytest.raises(errors.ServiceError) as e:
        asyncio.run(coro)  # type: ignore[arg-type]
    return e.value.err.code


def test_entry_checks_run_before_the_back_end() -> None:
    ops = _Recorder()
    assert _code(ops.start_run(RunRequest(cmd=["a\0b"]))) == "bad_request"  # schema
    assert _code(ops.start_run(RunRequest(cmd=["x"]), idempotency_key="a b")) == "bad_request"
    assert _code(ops.start_run(RunRequest(cmd=["x"]), "file:///etc/passwd")) == "bad_request"  # callback target
    assert ops.got == []
    sub = Submission(lang="cobol", source=b"", tests=[TestCase()])
    assert _code(ops.start_submission(sub)) == "bad_request"  # the back end's SchemaError, mapped once
    info = asyncio.run(ops.start_run(RunRequest(cmd=["x"]), idempotency_key="k1"))
    assert info.job == "j1" and ops.got[-1][1] == "k1"


def test_refusals_are_counted_by_code() -> None:
    ops = _Recorder()
    ops.draining = True
    assert not ops.ready() and ops.unready_reason() == "draining"
    with pytest.raises(errors.ServiceError) as e:
        asyncio.run(ops.start_run(RunRequest(cmd=["x"])))
    assert e.value.err.code == "draining" and e.value.err.retry_after == errors.RETRY_AFTER
    assert "the daemon is shutting down" in e.value.err.message
    ops.refused("queue_full", "full", 3.0)
    text = asyncio.run(ops.metrics_text()).decode()
    assert 'sandboxd_rejections_total{reason="draining"} 1.0' in text
    assert 'sandboxd_rejections_total{reason="queue_full"} 1.0' in text
