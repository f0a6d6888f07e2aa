"""Job kinds (sandboxd.jobs.kinds): one object per kind, looked up by spec type and
stored name; Judge0 and Piston plug in (sandboxd.compat.kinds).  Pure: no root."""

from __future__ import annotations

import msgspec
import pytest

from sandboxd.api import httpserver
from sandboxd.compat import judge0, piston
from sandboxd.compat import kinds as compat_kinds
from sandboxd.jobs.fingerprint import fingerprint
from sandboxd.jobs.kinds import KINDS, RUN, SUBMISSION, Registry, UnknownKind
from sandboxd.schema import FileIn, Limits, RunRequest, SchemaError, Submission, TestCase

compat_kinds.register()


def piston_job(path: str = "main.py") -> piston.Job:
    return piston.Job(
        lang="python3",
        language="python",
        version="3.11.2",
        entry=FileIn(path, b"print(input())"),
        others=[],
        stdin=b"hi\n",
        args=[],
        run_limits=Limits(),
    )


def test_stored_names_are_the_previous_versions() -> None:
    # Job store rows (op), fingerprints (op) and Redis (fleet kind) keep the names the
    # previous version wrote and reads, so both read each other's jobs in a rolling upgrade.
    # (test_kinds_service.py registers a "test-*" plug-in kind in this process too.)
    names = {k.name: (k.op, k.fleet, k.public) for k in KINDS.kinds() if not k.name.startswith("test-")}
    assert names == {
        "run": ("run", "run", "run"),
        "submission": ("submit", "submission", "submission"),
        "judge0": ("compat", "compat", "submission"),
        "piston": ("compat", "compat", "submission"),
    }


def test_compat_specs_share_a_stored_name_and_are_told_apart_by_their_tag() -> None:
    job = piston_job()
    data = KINDS.encode(job)
    # What the previous version decodes (its compat union): the same bytes, the `api` tag inside.
    assert msgspec.msgpack.decode(data)["api"] == "piston"
    assert msgspec.msgpack.decode(data, type=judge0.Request | piston.Job) == job
    for decode in (KINDS.decode, KINDS.decode_fleet):
        kind, back = decode("compat", data)
        assert kind is compat_kinds.PISTON and back == job
    assert KINDS.of(job) is compat_kinds.PISTON and KINDS.is_compat("op", "compat")
    assert KINDS.is_compat("fleet", "compat") and not KINDS.is_compat("fleet", "submission")


def test_a_spec_read_back_is_checked_as_one_sent_is() -> None:
    with pytest.raises(SchemaError):
        KINDS.decode_fleet("compat", KINDS.encode(piston_job("../etc/passwd")))
    with pytest.raises(SchemaError):
        KINDS.decode("run", KINDS.encode(RunRequest(cmd=["x\0y"])))


def test_unknown_stored_names_and_types() -> None:
    with pytest.raises(UnknownKind, match="unknown job kind 'judge9'"):
        KINDS.decode_fleet("judge9", b"\x80")
    with pytest.raises(UnknownKind, match="no job kind runs a FileIn"):
        KINDS.of(FileIn("a"))
    assert KINDS.public("judge9") == "submission" and KINDS.public("run") == "run"


def test_registering_is_idempotent_and_names_are_unique() -> None:
    reg = Registry(RUN)
    reg.add(RUN)
    with pytest.raises(ValueError, match="'run'"):
        reg.add(type(RUN)())
    compat_kinds.register()  # (again: a no-op)
    with pytest.raises(ValueError, match="'judge0'"):
        httpserver.mount("judge0", piston.make_app)
    assert {"judge0", "piston"} <= set(httpserver.mounted())
    with pytest.raises(ValueError, match="'nope': not registered"):
        httpserver.make_api_app(None, "nope")  # type: ignore[arg-type]


def test_costs_declared_by_the_kind() -> None:
    sub = Submission(lang="c", source=b"", tests=[TestCase(b""), TestCase(b"")])
    assert SUBMISSION.runs(sub) == 3 and SUBMISSION.cost(sub) == 2
    assert RUN.runs(RunRequest(cmd=["true"])) == 1
    assert compat_kinds.PISTON.runs(piston_job()) == 2  # a compile and a run
    assert compat_kinds.PISTON.lang(piston_job()) == "python3"


def test_fingerprints_use_the_stored_op() -> None:
    job = piston_job()
    kind = KINDS.of(job)
    # (the op is in the hash: a key bound by the previous version still names this request)
    assert fingerprint(kind.op, job, None) == fingerprint("compat", job, None)
    assert fingerprint(kind.op, job, None) != fingerprint("submit", job, None)
