"""Hostile programs as data (tests/hostile/*.toml) against real boxes."""

from __future__ import annotations

import time
import tomllib
from pathlib import Path

import msgspec
import pytest
from conftest import SyncEngine

from sandboxd.schema import Limits, MiB, RunRequest, RunResult, SchemaError

DIR = Path(__file__).parent / "hostile"


class CaseLimits(msgspec.Struct, forbid_unknown_fields=True):
    time: float = 1.0
    wall: float | None = None
    memory_mb: int = 256
    procs: int = 64
    output: int = 1 << 20
    file_size_mb: int = 64

    def limits(self) -> Limits:
        return Limits(
            cpu_time=self.time,
            wall_time=self.wall,
            memory=self.memory_mb * MiB,
            procs=self.procs,
            output=self.output,
            file_size=self.file_size_mb * MiB,
        )


class Expect(msgspec.Struct, forbid_unknown_fields=True):
    status: list[str]
    stdout_contains: str | None = None
    stdout_not_contains: str | None = None
    stderr_contains: str | None = None
    max_wall: float | None = None


class Case(msgspec.Struct, forbid_unknown_fields=True):
    description: str
    threat: str
    lang: str
    expect: Expect
    source: str | None = None
    cmd: list[str] | None = None
    stdin: str = ""
    stdin_bytes: int = 0
    env_bytes: int = 0
    plant: str | None = None
    repeat: int = 1
    limits: CaseLimits = msgspec.field(default_factory=CaseLimits)
    files_out: dict[str, str] = msgspec.field(default_factory=dict)


def load(path: Path) -> Case:
    try:
        case = msgspec.convert(tomllib.loads(path.read_text()), Case)
    except (tomllib.TOMLDecodeError, msgspec.ValidationError) as e:
        raise AssertionError(f"{path.name}: {e}") from None
    assert (case.cmd is None) == (case.lang != "cmd"), f"{path.name}: cmd is for lang = 'cmd' only"
    assert (case.source is None) == (case.lang == "cmd"), f"{path.name}: source is needed unless lang = 'cmd'"
    assert set(case.files_out.values()) <= {"refused", "ok"}, f"{path.name}: files_out values: refused | ok"
    return case


CASES = sorted(DIR.glob("*.toml"))


def run_once(engine: SyncEngine, case: Case, source: str | None) -> RunResult:
    stdin = case.stdin.encode() + b"\0" * case.stdin_bytes
    lim = case.limits.limits()
    if case.lang == "cmd":
        assert case.cmd is not None
        env = {"PATH": "/usr/bin:/bin"}
        if case.env_bytes:
            env["BIG"] = "x" * case.env_bytes
        req = RunRequest(cmd=case.cmd, env=env, stdin=stdin, limits=lim, files_out=list(case.files_out))
        return engine.run(req=req)
    assert source is not None
    s = engine.source(case.lang, source, stdin=stdin, limits=lim, files_out=list(case.files_out))
    assert s.run is not None, f"compile failed: {s.compile}"
    return s.run


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_hostile(engine: SyncEngine, path: Path) -> None:
    case = load(path)
    ex = case.expect
    if case.plant is not None:
        planted = run_once(engine, case, case.plant)
        assert planted.status == "ok", f"plant failed: {planted}"
    for attempt in range(case.repeat):
        t0 = time.monotonic()
        try:
            r = run_once(engine, case, case.source)
        except SchemaError as e:
            assert ex.status == ["refused"], f"refused by the schema: {e}"
            return
        where = f"{path.name} run {attempt + 1}: status {r.status} ({r.message}) exit {r.exit_code} signal {r.signal}"
        where += f"\nstdout {r.stdout[:500]!r}\nstderr {r.stderr[:500]!r}"
        assert r.status in ex.status, where
        if ex.stdout_contains is not None:
            assert ex.stdout_contains.encode() in r.stdout, where
        if ex.stdout_not_contains is not None:
            assert ex.stdout_not_contains.encode() not in r.stdout, where
        if ex.stderr_contains is not None:
            assert ex.stderr_contains.encode() in r.stderr, where
        if ex.max_wall is not None:
            # Host-side time of the whole request (files out included): a hang
            # anywhere shows here.  Generous bounds: they catch hangs, not speed.
            assert time.monotonic() - t0 < ex.max_wall, where
        got = {f.path: ("ok" if f.content is not None else "refused") for f in r.files}
        assert got == case.files_out, f"{where}\nfiles: {[(f.path, f.error) for f in r.files]}"
    # Whatever the case did, the pool still serves a normal run.
    assert engine.run(["true"]).status == "ok"


def test_every_case_file_is_valid() -> None:
    assert len(CASES) >= 30
    for p in CASES:
        load(p)
