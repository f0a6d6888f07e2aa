"""Hostile programs as data: every tests/sandbox/hostile/*.toml is one case, run against real boxes.

The schema is documented in tests/sandbox/hostile/README.md and validated strictly
here: an unknown key, a wrong type or an inconsistent case fails that case's
test with the file name.

A `check_after = "plant"` case is run deterministically on every box of the
pool: the runner runs the plant, then takes every box of the pool, and hands
them back one at a time so that the check's run can only land on that box.
"""

from __future__ import annotations

import asyncio
import time
import tomllib
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, Literal, TypeVar

import msgspec
import pytest
from box_fixtures import SyncEngine

from sandboxd.engine.engine import Compiled
from sandboxd.sandbox.box import Box
from sandboxd.schema import STATUSES, Limits, MiB, RunRequest, RunResult, Status

T = TypeVar("T")
DIR = Path(__file__).parent / "hostile"
CASES = sorted(DIR.glob("*.toml"))

Lang = Literal["c", "cpp", "python3", "cmd"]
FileVerdict = Literal["ok", "refused"]


class CaseLimits(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Unset keys keep sandboxd's own defaults (schema.Limits)."""

    time: float | None = None  # CPU seconds
    wall: float | None = None  # seconds; unset: sandboxd's 2 x time + 1
    memory_mb: int | None = None
    procs: int | None = None
    output: int | None = None  # bytes per stream
    file_size_mb: int | None = None

    def to_limits(self) -> Limits:
        kw: dict[str, float | int] = {}
        if self.time is not None:
            kw["cpu_time"] = self.time
        if self.wall is not None:
            kw["wall_time"] = self.wall
        if self.memory_mb is not None:
            kw["memory"] = self.memory_mb * MiB
        if self.procs is not None:
            kw["procs"] = self.procs
        if self.output is not None:
            kw["output"] = self.output
        if self.file_size_mb is not None:
            kw["file_size"] = self.file_size_mb * MiB
        return msgspec.convert(kw, Limits)  # sandboxd's own bounds apply


class Expect(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    status: list[Status]
    stdout_contains: str | None = None
    stdout_not_contains: str | None = None
    stderr_contains: str | None = None
    max_wall: float | None = None


class Case(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    name: str
    description: str
    threat: str
    lang: Lang
    expect: Expect
    source: str | None = None
    cmd: list[str] | None = None
    stdin: str = ""
    stdin_repeat: int = 1  # stdin is `stdin` repeated this many times (large inputs)
    plant: bool = False
    check_after: str | None = None
    alongside: str | None = None  # run at the same time as that case, in another box
    limits: CaseLimits = CaseLimits()
    files_out: dict[str, FileVerdict] = {}

    @property
    def stdin_bytes(self) -> bytes:
        return self.stdin.encode() * self.stdin_repeat


def _shape_problems(case: Case, path: Path) -> list[str]:
    """What is wrong with the case on its own."""
    problems: list[str] = []
    if case.name != path.stem:
        problems.append(f"name {case.name!r} must be the file stem {path.stem!r}")
    if not case.description.strip() or not case.threat.strip():
        problems.append("description and threat must not be empty")
    if case.lang == "cmd" and (case.cmd is None or case.source is not None):
        problems.append("lang = 'cmd' needs `cmd` (an argv list) and no `source`")
    if case.lang != "cmd" and (case.source is None or case.cmd is not None):
        problems.append(f"lang = {case.lang!r} needs `source` and no `cmd`")
    if case.cmd is not None and not case.cmd:
        problems.append("cmd must not be empty")
    if not case.expect.status:
        problems.append("expect.status must list at least one status")
    if case.stdin_repeat < 1:
        problems.append("stdin_repeat must be >= 1")
    if case.expect.max_wall is not None and case.expect.max_wall <= 0:
        problems.append("expect.max_wall must be > 0")
    if case.plant and case.check_after is not None:
        problems.append("a case is either a plant or a check, not both")
    return problems


def _link_problems(case: Case) -> list[str]:
    """What is wrong with the cases it names (plant / check_after / alongside)."""
    problems: list[str] = []
    if case.check_after is not None:
        target = DIR / f"{case.check_after}.toml"
        if not target.is_file():
            problems.append(f"check_after: no case {case.check_after!r}")
        elif not load(target).plant:
            problems.append(f"check_after: {case.check_after!r} is not a `plant = true` case")
    if case.alongside is not None:
        if case.plant or case.check_after is not None:
            problems.append("alongside does not combine with plant or check_after")
        partner = DIR / f"{case.alongside}.toml"
        if case.alongside == case.name or not partner.is_file():
            problems.append(f"alongside: no other case {case.alongside!r}")
        else:
            other = load(partner)
            if other.alongside is not None or other.check_after is not None or other.plant:
                problems.append(f"alongside: {case.alongside!r} must be a plain case")
    if case.plant and not any(_checks(p, case.name) for p in CASES):
        problems.append("a plant needs at least one `check_after` case naming it")
    return problems


def load(path: Path) -> Case:
    """The case in `path`, validated; any problem fails with the file name."""
    where = path.name
    try:
        case = msgspec.convert(tomllib.loads(path.read_text()), Case)
    except (tomllib.TOMLDecodeError, msgspec.ValidationError) as e:
        raise AssertionError(f"{where}: {e}") from None
    problems = _shape_problems(case, path) + _link_problems(case)
    try:
        case.limits.to_limits()
    except msgspec.ValidationError as e:
        problems.append(f"limits: {e}")
    assert not problems, f"{where}: " + "; ".join(problems)
    return case


def _checks(path: Path, plant: str) -> bool:
    try:
        return tomllib.loads(path.read_text()).get("check_after") == plant
    except tomllib.TOMLDecodeError:
        return False


def describe(case: Case, r: RunResult, label: str) -> str:
    files = "; ".join(f"{f.path}: {'ok' if f.content is not None else f.error}" for f in r.files)
    return (
        f"{case.name}.toml ({label}): status {r.status} (expected one of {case.expect.status})"
        f" message {r.message!r} exit {r.exit_code} signal {r.signal}"
        f" cpu {r.cpu_time:.3f}s wall {r.wall_time:.3f}s memory {r.memory >> 20} MiB\n"
        f"stdout {r.stdout[:500]!r}{' (truncated)' if r.stdout_truncated else ''}\n"
        f"stderr {r.stderr[:500]!r}{' (truncated)' if r.stderr_truncated else ''}\n"
        f"files [{files}]"
    )


def check(case: Case, r: RunResult, elapsed: float, label: str) -> None:
    """Every expectation of the case against one run; a failure names them all."""
    ex = case.expect
    failed = []
    if r.status not in ex.status:
        failed.append(f"status {r.status} not in {ex.status}")
    if ex.stdout_contains is not None and ex.stdout_contains.encode() not in r.stdout:
        failed.append(f"stdout lacks {ex.stdout_contains!r}")
    if ex.stdout_not_contains is not None and ex.stdout_not_contains.encode() in r.stdout:
        failed.append(f"stdout contains {ex.stdout_not_contains!r}")
    if ex.stderr_contains is not None and ex.stderr_contains.encode() not in r.stderr:
        failed.append(f"stderr lacks {ex.stderr_contains!r}")
    if ex.max_wall is not None:
        # Host-side seconds of the whole run request, files out included: a
        # hang anywhere (a fifo opened for real, a wait on a stray process) shows.
        if elapsed > ex.max_wall:
            failed.append(f"the request took {elapsed:.2f}s, more than max_wall {ex.max_wall}s")
        if r.wall_time > ex.max_wall:
            failed.append(f"wall_time {r.wall_time:.2f}s, more than max_wall {ex.max_wall}s")
    got = {f.path: ("ok" if f.content is not None else "refused") for f in r.files}
    if got != case.files_out:
        failed.append(f"files_out {got}, expected {case.files_out}")
    for f in r.files:
        if (f.content is None) == (f.error is None):
            failed.append(f"files_out {f.path}: exactly one of content and error must be set")
    assert not failed, "; ".join(failed) + "\n" + describe(case, r, label)


# No run of this suite may take longer; a hang fails the case instead of the
# whole session (pytest-timeout's signal cannot interrupt the event loop).
HANG = 60.0


def call(engine: SyncEngine, coro: Coroutine[Any, Any, T], what: str) -> T:
    async def bounded() -> T:
        try:
            return await asyncio.wait_for(coro, HANG)
        except TimeoutError:
            raise AssertionError(f"{what}: no answer within {HANG}s (hang)") from None

    return engine.call(bounded())


def release(engine: SyncEngine, box: Box, pool: str) -> None:
    async def on_loop() -> None:  # the pool schedules the reset on the running loop
        engine.engine.release(box, pool)

    engine.call(on_loop())


COMMENT = {"c": "//", "cpp": "//", "python3": "#"}


def compile_case(engine: SyncEngine, case: Case, fresh: bool = False) -> Compiled | None:
    """The compiled program (None for lang = 'cmd'); a failed compile fails the case.

    fresh: compile for real, in whichever box is free now, instead of taking the
    engine's cache of identical compiles (a trailing comment makes it unique)."""
    if case.lang == "cmd":
        return None
    assert case.source is not None
    source = case.source
    if fresh:
        source += f"\n{COMMENT[case.lang]} fresh compile {time.monotonic_ns()}\n"
    comp = call(engine, engine.engine.compile(case.lang, source.encode()), f"{case.name}: compile")
    if not comp.ok:
        assert comp.result is not None
        c = comp.result
        output = (c.stderr or c.stdout)[:2000].decode(errors="replace")
        raise AssertionError(f"{case.name}.toml: compile {c.status} ({c.message}): {output}")
    return comp


async def timed_run(engine: SyncEngine, case: Case, comp: Compiled | None) -> tuple[RunResult, float]:
    """One run of the case through the engine's normal path; (result, host seconds)."""
    lim = case.limits.to_limits()
    t0 = time.monotonic()
    if comp is None:
        assert case.cmd is not None
        req = RunRequest(cmd=case.cmd, stdin=case.stdin_bytes, limits=lim, files_out=list(case.files_out))
        r = await engine.engine.run(req)
    else:
        r = await engine.engine.run_compiled(comp, case.stdin_bytes, lim, files_out=list(case.files_out))
    return r, time.monotonic() - t0


def run_once(engine: SyncEngine, case: Case, comp: Compiled | None) -> tuple[RunResult, float]:
    return call(engine, timed_run(engine, case, comp), f"{case.name}: run")


def run_together(engine: SyncEngine, a: Case, b: Case) -> list[tuple[RunResult, float]]:
    """Both cases at once: with both started together, each has a box of its own."""
    ca, cb = compile_case(engine, a), compile_case(engine, b)

    async def both() -> list[tuple[RunResult, float]]:
        return list(await asyncio.gather(timed_run(engine, a, ca), timed_run(engine, b, cb)))

    return call(engine, both(), f"{a.name} alongside {b.name}")


def pool_name(engine: SyncEngine, case: Case) -> str:
    if case.lang == "cmd":
        return "host"
    return engine.engine.pool_of(engine.engine.language(case.lang))


def on_every_box(engine: SyncEngine, pool: str, fn: Callable[[Box], None]) -> int:
    """Calls fn(box) for every box of `pool` while all the others are held by
    us, so a run that fn starts on that pool can only use that box.  Returns
    the number of boxes."""
    size = engine.engine.pools[pool].size
    held: list[Box | None] = []
    try:
        for _ in range(size):
            held.append(call(engine, engine.engine.box(pool), "taking every box of the pool"))
        for i in range(size):
            box = held[i]
            assert box is not None
            held[i] = None
            release(engine, box, pool)  # reset in the background, then the only idle box
            fn(box)
            held[i] = call(engine, engine.engine.box(pool), "taking the box back")
    finally:
        for b in held:
            if b is not None:
                release(engine, b, pool)
    return size


def fresh_boxes(engine: SyncEngine, pool: str) -> None:
    """Replaces every box of `pool` by a newly built one.  After a plant (and
    its checks) ran: what a plant left behind must fail its own check, never
    the unrelated cases that happen to run in the same box later."""
    size = engine.engine.pools[pool].size
    boxes = [call(engine, engine.engine.box(pool), "taking every box of the pool") for _ in range(size)]
    for box in boxes:
        box.broken = "replaced by the hostile suite after a leftover plant"
        release(engine, box, pool)


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_hostile(engine: SyncEngine, path: Path) -> None:
    case = load(path)
    if case.alongside is not None:
        partner = load(DIR / f"{case.alongside}.toml")
        assert pool_name(engine, partner) == pool_name(engine, case), f"{path.name}: alongside a case of another pool"
        assert engine.engine.pools[pool_name(engine, case)].size >= 2, "alongside needs a pool of two boxes or more"
        (r, elapsed), (rp, elapsed_p) = run_together(engine, case, partner)
        check(partner, rp, elapsed_p, f"alongside {case.name}")
        check(case, r, elapsed, f"alongside {partner.name}")
    elif case.check_after is None:
        try:
            r, elapsed = run_once(engine, case, compile_case(engine, case))
            check(case, r, elapsed, "run")
        finally:
            if case.plant:
                fresh_boxes(engine, pool_name(engine, case))
    else:
        plant = load(DIR / f"{case.check_after}.toml")
        pool = pool_name(engine, case)
        assert pool_name(engine, plant) == pool, (
            f"{path.name}: the check runs on pool {pool!r}, its plant {plant.name!r} on"
            f" {pool_name(engine, plant)!r}: they must share boxes"
        )

        def check_on(box: Box) -> None:
            runs = box.runs
            # Compiled here, so the compile step too writes into the box the plant used.
            r, elapsed = run_once(engine, case, compile_case(engine, case, fresh=True))
            check(case, r, elapsed, f"check on box {box.name}")
            compiles = case.lang != "cmd" and engine.engine.language(case.lang).compile is not None
            want = runs + 1 + compiles
            assert box.runs == want, f"{path.name}: the check was meant for box {box.name}: {box.runs} runs, not {want}"

        try:
            recycled = engine.engine.pools[pool].stats.recycled
            r, elapsed = run_once(engine, plant, compile_case(engine, plant))
            check(plant, r, elapsed, "plant")
            assert on_every_box(engine, pool, check_on) >= 1
            # A box whose reset failed is rebuilt, and the check would then
            # prove nothing about what a reset leaves: every box must survive.
            assert engine.engine.pools[pool].stats.recycled == recycled, f"{path.name}: a reset failed, box rebuilt"
        finally:
            fresh_boxes(engine, pool)
    # Whatever the case did, the pool still serves a normal run.
    alive = RunRequest(cmd=["sh", "-c", "echo alive"], limits=Limits(cpu_time=1.0))
    after = call(engine, engine.engine.run(alive), "a normal run after the case")
    assert (after.status, after.stdout) == ("ok", b"alive\n"), f"after {path.name}: {after}"


def test_the_suite_is_complete() -> None:
    """Enough cases, every status name known, every plant checked, names unique."""
    assert 35 <= len(CASES) <= 100, len(CASES)
    cases = [load(p) for p in CASES]
    assert all(set(c.expect.status) <= set(STATUSES) for c in cases)
    assert len({c.name for c in cases}) == len(cases)
    plants = {c.name for c in cases if c.plant}
    assert plants, "no leftover plants"
    assert plants == {c.check_after for c in cases if c.check_after is not None}
    langs = {c.lang for c in cases}
    assert langs == {"c", "cpp", "python3", "cmd"}, langs
