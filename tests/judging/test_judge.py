"""Judged submissions: verdicts, checkers, custom checkers, interactive problems."""

from __future__ import annotations

import asyncio

import pytest
from box_fixtures import SyncEngine

from sandboxd.engine.compiled import Compiled
from sandboxd.judging.judge import judge
from sandboxd.schema import (
    Checker,
    FileIn,
    Limits,
    LimitsPatch,
    Program,
    SchemaError,
    Submission,
    SubmissionResult,
    TestCase,
)

ECHO_C = """#include <stdio.h>
int main(void) { char b[4096]; size_t n; while ((n = fread(b, 1, sizeof b, stdin)) > 0) fwrite(b, 1, n, stdout); }
"""
APLUSB_PY = "a, b = map(int, input().split())\nprint(a + b)\n"


def judged(engine: SyncEngine, sub: Submission) -> SubmissionResult:
    return engine.call(judge(engine.engine, sub))


def t(inp: str, exp: str | None = None, **kw: object) -> TestCase:
    return TestCase(input=inp.encode(), expected=None if exp is None else exp.encode(), **kw)  # type: ignore[arg-type]


def test_accepted_and_wrong_answer(engine: SyncEngine) -> None:
    tests = [t("1 2\n", "3"), t("5 5\n", "10\n"), t("2 2\n", "5")]
    r = judged(engine, Submission(lang="python3", source=APLUSB_PY.encode(), tests=tests))
    assert [x.verdict for x in r.tests] == ["AC", "AC", "WA"]
    assert r.verdict == "WA"
    assert "token 1" in r.tests[2].message


def test_verdict_is_the_first_failing_test(engine: SyncEngine) -> None:
    src = "import sys\nn = int(input())\nif n == 1: sys.exit(3)\nif n == 2:\n    while True: pass\nprint(n)\n"
    tests = [t("0", "0"), t("2", "2"), t("1", "1")]
    r = judged(engine, Submission(lang="python3", source=src.encode(), tests=tests))
    assert [x.verdict for x in r.tests] == ["AC", "TLE", "RE"]
    assert r.verdict == "TLE"


def test_every_run_verdict(engine: SyncEngine) -> None:
    src = b"""
import sys
k = input().strip()
if k == "mle":
    x = bytearray(200 << 20)
elif k == "ole":
    sys.stdout.write("x" * (2 << 20))
elif k == "sig":
    import os; os.kill(os.getpid(), 11)
elif k == "tle":
    while True: pass
print("fine")
"""
    tests = [t("mle"), t("ole"), t("sig"), t("tle", limits=LimitsPatch(cpu_time=0.3)), t("ok", "fine")]
    r = judged(engine, Submission(lang="python3", source=src, tests=tests, limits=Limits(memory=64 << 20)))
    assert [x.verdict for x in r.tests] == ["MLE", "OLE", "RE", "TLE", "AC"]
    assert r.tests[2].signal == 11
    assert r.tests[3].time < 1.0  # the per-test override applied


def test_compile_error_keeps_the_compiler_output(engine: SyncEngine) -> None:
    r = judged(engine, Submission(lang="c", source=b"int main(void) { return nope; }", tests=[t("")]))
    assert r.verdict == "CE" and not r.tests
    assert r.compile is not None and b"nope" in r.compile.stderr


def test_compile_options_are_argv_not_shell(engine: SyncEngine) -> None:
    src = b'#include <stdio.h>\nint main(void){printf("%d\\n", VALUE);}\n'
    sub = Submission(lang="c", source=src, tests=[t("", "42")], compile_options=["-DVALUE=42", "; touch /box/pwned"])
    r = judged(engine, sub)
    assert r.verdict == "CE"  # the second option is a (bad) file name to gcc, not a shell command
    r = judged(engine, Submission(lang="c", source=src, tests=[t("", "42")], compile_options=["-DVALUE=42"]))
    assert r.verdict == "AC", r


def test_builtin_checkers(engine: SyncEngine) -> None:
    src = b"import sys\nsys.stdout.write(sys.stdin.read())\n"

    def verdicts(kind: str, pairs: list[tuple[str, str]], **kw: float) -> list[str]:
        tests = [t(out, exp) for out, exp in pairs]
        sub = Submission(lang="python3", source=src, tests=tests, checker=Checker(kind=kind, **kw))  # type: ignore[arg-type]
        return [x.verdict for x in judged(engine, sub).tests]

    assert verdicts("exact", [("a b\n", "a b\n"), ("a b\n", "a b"), ("a  b\n", "a b\n")]) == ["AC", "WA", "WA"]
    assert verdicts("tokens", [("a  b\n\n", "a b"), ("a\nb", "a b"), ("a b c", "a b")]) == ["AC", "AC", "WA"]
    assert verdicts("lines", [("a b  \n\n\n", "a b\n"), ("a\nb", "a b")]) == ["AC", "WA"]
    got = verdicts("float", [("1.0000001 x", "1 x"), ("1.1", "1"), ("nan", "1"), ("1e9", "1000000000.5")], rel_tol=1e-9)
    assert got == ["AC", "WA", "WA", "AC"]


def test_custom_checker_program(engine: SyncEngine) -> None:
    # Accepts any two numbers that sum to the input (several right answers).
    checker = b"""
import sys
n = int(open(sys.argv[1]).read())
try:
    a, b = map(int, open(sys.argv[2]).read().split())
except ValueError:
    print("bad format"); sys.exit(2)
if a + b != n or a < 0 or b < 0:
    print(f"{a}+{b} != {n}"); sys.exit(1)
print("ok")
"""
    src = b"n = int(input())\nprint(n // 3, n - n // 3 if n != 7 else 0)\n"
    sub = Submission(
        lang="python3",
        source=src,
        tests=[t("10"), t("7"), t("4")],
        checker=Checker(kind="custom", program=Program(lang="python3", source=checker)),
    )
    r = judged(engine, sub)
    assert [x.verdict for x in r.tests] == ["AC", "WA", "AC"]
    assert "!= 7" in r.tests[1].message


def test_broken_custom_checker_is_an_internal_error(engine: SyncEngine) -> None:
    sub = Submission(
        lang="python3",
        source=b"print(1)",
        tests=[t("")],
        checker=Checker(kind="custom", program=Program(lang="c", source=b"this is not C")),
    )
    r = judged(engine, sub)
    assert r.verdict == "IE" and "checker does not compile" in r.message


def test_interactive_problem(engine: SyncEngine) -> None:
    # Guess the number in input.txt; the interactor answers <, > or =.
    interactor = b"""
import os, sys
secret = int(open(sys.argv[1]).read())
def say(s):
    try:
        print(s, flush=True)
    except BrokenPipeError:
        print("solution exited mid-dialogue", file=sys.stderr); os._exit(1)
for q in range(1, 12):
    line = sys.stdin.readline()
    if not line:
        print("solution gave up", file=sys.stderr); sys.exit(1)
    g = int(line)
    say("=" if g == secret else ("<" if secret < g else ">"))
    if g == secret:
        print(f"found in {q}", file=sys.stderr); sys.exit(0)
print("too many queries", file=sys.stderr); sys.exit(1)
"""
    good = b"""
lo, hi = 1, 1000
while True:
    m = (lo + hi) // 2
    print(m, flush=True)
    a = input()
    if a == "=": break
    if a == "<": hi = m - 1
    else: lo = m + 1
"""
    bad = b"print(1, flush=True)\nprint(2, flush=True)\n"
    tests = [t("1"), t("999"), t("500")]
    prog = Program(lang="python3", source=interactor)
    r = judged(engine, Submission(lang="python3", source=good, tests=tests, interactor=prog))
    assert [x.verdict for x in r.tests] == ["AC", "AC", "AC"], r
    assert "found in" in r.tests[0].message
    r = judged(engine, Submission(lang="python3", source=bad, tests=tests[1:2], interactor=prog))
    assert r.verdict == "WA", r


def test_fifty_tests_in_parallel(engine: SyncEngine) -> None:
    tests = [t(f"{i}\n", f"{i}\n") for i in range(50)]
    seen: list[int] = []
    r = engine.call(
        judge(engine.engine, Submission(lang="c", source=ECHO_C.encode(), tests=tests), lambda x: seen.append(x.index))
    )
    assert r.verdict == "AC" and len(r.tests) == 50
    assert sorted(seen) == list(range(50))


def test_stop_on_first_failure(engine: SyncEngine) -> None:
    tests = [t("1", "1"), t("2", "x")] + [t("3", "3")] * 20
    sub = Submission(lang="c", source=ECHO_C.encode(), tests=tests, stop_on_first_failure=True)
    r = judged(engine, sub)
    assert r.verdict == "WA"
    assert [x.index for x in r.tests][:2] == [0, 1] and len(r.tests) < 22


def test_prepared_runs_are_checked_once_and_each_test_gets_its_own_stdin(engine: SyncEngine) -> None:
    """A submission's tests share one checked request (Engine.prepare_run): each
    run still gets its own stdin, a test with limits of its own runs under them,
    and the shared request is never changed by the runs made from it."""
    eng = engine.engine
    comp = engine.call(eng.compile("c", ECHO_C.encode()))
    prep = eng.prepare_run(comp, Limits(cpu_time=2.0))
    before = prep.request.stdin, [f.path for f in prep.request.files_in], prep.request.limits
    outs = engine.gather(*(eng.run_prepared(prep, f"{i}\n".encode()) for i in range(6)))
    assert [r.stdout for r in outs] == [f"{i}\n".encode() for i in range(6)]
    assert (prep.request.stdin, [f.path for f in prep.request.files_in], prep.request.limits) == before
    tests = [t("a\n", "a\n"), t("b\n", "b\n", limits=LimitsPatch(cpu_time=0.5)), t("c\n", "c\n")]
    r = judged(engine, Submission(lang="c", source=ECHO_C.encode(), tests=tests))
    assert [x.verdict for x in r.tests] == ["AC", "AC", "AC"] and r.verdict == "AC"


def test_a_prepared_run_is_still_checked(engine: SyncEngine) -> None:
    """prepare_run refuses what Engine.run refuses (validate_run, once): a
    compiled program whose files would land outside /box never runs."""
    eng = engine.engine
    bad = Compiled(eng.language("c"), None, [FileIn("../main", b"x", executable=True)])
    with pytest.raises(SchemaError, match="inside /box"):
        eng.prepare_run(bad)


def test_a_submission_cancelled_while_its_tests_run_is_cancelled_not_judged(engine: SyncEngine) -> None:
    """Cancelling the judging task (a cancel, a client gone, a drain) must end it
    cancelled: as_completed's await is where that cancel lands, and a swallowed
    one returned verdict AC with no tests."""
    sub = Submission(lang="python3", source=b"import time\ntime.sleep(30)\n", tests=[t("", ""), t("", "")])

    async def scenario() -> None:
        task = asyncio.ensure_future(judge(engine.engine, sub))
        await asyncio.sleep(1.5)  # (compiled and its tests running)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, 20)

    engine.call(scenario())
