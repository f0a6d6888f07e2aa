"""Judged submissions: compile once, run the tests in parallel, check, give verdicts."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from sandboxd.judging.checkers import BUILTIN
from sandboxd.schema import (
    FileIn,
    Limits,
    RunResult,
    Submission,
    SubmissionResult,
    TestCase,
    TestResult,
    Verdict,
    resolve_test,
    validate_submission,
)

if TYPE_CHECKING:  # (annotations only: the compat APIs' views, which a coordinator loads, use this module's rules)
    from sandboxd.engine.engine import Compiled, Engine, PreparedRun

PREVIEW = 4096  # bytes of a test's stdout/stderr kept in its result
# testlib's exit codes: 0 OK, 1 WA, 2 presentation error (judged as WA); others mean the checker failed.
CHECKER_REJECTS = (1, 2)

STATUS_VERDICT: dict[str, Verdict] = {
    "ok": "AC",  # before the checker has its say
    "time_limit": "TLE",
    "memory_limit": "MLE",
    "output_limit": "OLE",
    "nonzero_exit": "RE",
    "signaled": "RE",
    "bad_syscall": "RE",
    "internal_error": "IE",
}

Progress = Callable[[TestResult], None]
Read = Callable[[str], bytes]  # a stored file's bytes by its hash (sandboxd.filestore)


def compile_verdict(c: RunResult) -> Verdict:
    """The verdict of a compile that failed, the one rule for every API: CE when
    the program is at fault (the compiler refused it, crashed on it, or used up
    its compile limits: time, memory, output), IE when the system is (the box or
    its agent failed, the engine could not run the compiler: internal_error)."""
    return "IE" if c.status == "internal_error" else "CE"


def compile_failed(c: RunResult) -> SubmissionResult:
    """A submission whose compile failed: judged no further."""
    return SubmissionResult(compile_verdict(c), compile=c, message=c.message)


def test_result(i: int, verdict: Verdict, r: RunResult, message: str = "") -> TestResult:
    return TestResult(
        index=i,
        verdict=verdict,
        time=r.cpu_time,
        wall_time=r.wall_time,
        memory=r.memory,
        exit_code=r.exit_code,
        signal=r.signal,
        stdout=r.stdout[:PREVIEW],
        stderr=r.stderr[:PREVIEW],
        message=message or r.message,
    )


class Judge:
    """One submission's judging; `run()` returns its result."""

    def __init__(
        self, engine: Engine, sub: Submission, progress: Progress | None = None, read: Read | None = None
    ) -> None:
        self.engine = engine
        self.sub = validate_submission(sub)
        self.progress = progress
        self.read = read  # a test's bytes named by hash, read as the test starts (not all at once)
        # Tests named by hash are read from disk a pool's worth at a time: the
        # rest wait here, not in memory (all 20 tests of 100 MB would be read at once).
        self._reading = asyncio.Semaphore(max(1, engine.cfg.pool_size))
        self.deadline = None if sub.queue_deadline is None else time.monotonic() + sub.queue_deadline
        self.prepared: PreparedRun | None = None  # set once the solution has compiled (run)

    async def _compile(self, lang: str, source: bytes, files: list[FileIn], options: list[str]) -> Compiled:
        return await self.engine.compile(
            lang, source, files, options, self.sub.compile_limits, priority=self.sub.priority, deadline=self.deadline
        )

    async def run(self) -> SubmissionResult:
        sub = self.sub
        self.engine.language(sub.lang)  # unknown language: a schema error before any work
        helpers = [p for p in (sub.checker.program, sub.interactor) if p is not None]
        for p in helpers:
            self.engine.language(p.lang)
        if sub.interactor is not None and self.engine.cfg.pool_size < 2:
            return SubmissionResult("IE", message="interactive problems need a pool of at least 2 boxes")
        comps = await asyncio.gather(
            self._compile(sub.lang, sub.source, sub.files, sub.compile_options),
            *(self._compile(p.lang, p.source, [], []) for p in helpers),
        )
        sol = comps[0]
        if not sol.ok:
            assert sol.result is not None
            return compile_failed(sol.result)
        for p, c in zip(helpers, comps[1:], strict=True):
            if not c.ok:
                assert c.result is not None
                what = "checker" if p is sub.checker.program else "interactor"
                err = (c.result.stdout + c.result.stderr)[:PREVIEW].decode(errors="replace")
                return SubmissionResult("IE", compile=sol.result, message=f"the {what} does not compile: {err}")
        self.checker = comps[1] if sub.checker.program is not None else None
        self.interactor = comps[-1] if sub.interactor is not None else None
        # The solution's runs under the submission's limits, checked once for all its tests.
        self.prepared = self.engine.prepare_run(sol, sub.limits)
        results = await self._run_tests(sol)
        failed = next((t for t in results if t.verdict != "AC"), None)
        return SubmissionResult(
            verdict=failed.verdict if failed else "AC",
            compile=sol.result,
            tests=results,
            time=max((t.time for t in results), default=0.0),
            memory=max((t.memory for t in results), default=0),
        )

    async def _run_tests(self, sol: Compiled) -> list[TestResult]:
        sub = self.sub
        tasks = [asyncio.ensure_future(self._one(i, t, sol)) for i, t in enumerate(sub.tests)]
        done: dict[int, TestResult] = {}
        try:
            for fut in asyncio.as_completed(tasks):
                try:
                    res = await fut
                except asyncio.CancelledError:
                    # A test cancelled by stop_on_first_failure is skipped; the job's own
                    # cancel (a cancel, its client gone, a drain) lands on this await too,
                    # and swallowing it judged the submission AC with no tests.
                    me = asyncio.current_task()
                    if me is not None and me.cancelling():
                        raise
                    continue
                done[res.index] = res
                if self.progress is not None:
                    self.progress(res)
                if sub.stop_on_first_failure and res.verdict != "AC":
                    # Later tests cannot change the verdict; earlier ones still can.
                    for t in tasks[res.index + 1 :]:
                        t.cancel()
        finally:
            for t in tasks:
                t.cancel()
        return [done[i] for i in sorted(done)]

    async def _one(self, i: int, test: TestCase, sol: Compiled) -> TestResult:
        if self.read is None or (test.input_sha256 is None and test.expected_sha256 is None):
            return await self._test(i, test, sol)
        async with self._reading:
            return await self._test(i, resolve_test(test, self.read), sol)

    async def _test(self, i: int, test: TestCase, sol: Compiled) -> TestResult:
        sub = self.sub
        limits = test.limits.apply(sub.limits) if test.limits else sub.limits
        if self.interactor is not None:
            return await self._interactive(i, test, sol, limits)
        if test.limits or self.prepared is None:
            r = await self.engine.run_compiled(sol, test.input, limits, priority=sub.priority, deadline=self.deadline)
        else:
            r = await self.engine.run_prepared(self.prepared, test.input, priority=sub.priority, deadline=self.deadline)
        if r.status != "ok":
            return test_result(i, STATUS_VERDICT[r.status], r)
        if self.checker is not None:
            return await self._custom_check(i, test, r)
        if test.expected is None:
            return test_result(i, "AC", r)
        ok, msg = BUILTIN[sub.checker.kind](r.stdout, test.expected, sub.checker)
        return test_result(i, "AC" if ok else "WA", r, msg)

    async def _custom_check(self, i: int, test: TestCase, r: RunResult) -> TestResult:
        assert self.checker is not None and self.sub.checker.program is not None
        files = [
            FileIn("input.txt", test.input),
            FileIn("output.txt", r.stdout),
            FileIn("answer.txt", test.expected or b""),
        ]
        c = await self.engine.run_compiled(
            self.checker,
            limits=self.sub.checker.program.limits,
            files_in=files,
            args=["input.txt", "output.txt", "answer.txt"],
            priority=self.sub.priority,
        )
        comment = (c.stdout + c.stderr)[:PREVIEW].decode(errors="replace").strip()
        if c.status == "ok":
            return test_result(i, "AC", r, comment)
        if c.status == "nonzero_exit" and c.exit_code in CHECKER_REJECTS:
            return test_result(i, "WA", r, comment)
        return test_result(i, "IE", r, f"the checker failed ({c.status}, exit {c.exit_code}): {comment}")

    async def _interactive(self, i: int, test: TestCase, sol: Compiled, limits: Limits) -> TestResult:
        """Solution and interactor in two boxes, each one's stdout the other's stdin."""
        assert self.interactor is not None and self.sub.interactor is not None
        to_sol_r, to_sol_w = os.pipe2(os.O_CLOEXEC)
        to_int_r, to_int_w = os.pipe2(os.O_CLOEXEC)
        files = [FileIn("input.txt", test.input), FileIn("answer.txt", test.expected or b"")]
        sol_run = self.engine.run_compiled(
            sol,
            limits=limits,
            priority=self.sub.priority,
            deadline=self.deadline,
            stdio=(to_sol_r, to_int_w),
        )
        int_run = self.engine.run_compiled(
            self.interactor,
            limits=self.sub.interactor.limits,
            files_in=files,
            args=["input.txt", "answer.txt"],
            priority=self.sub.priority,
            stdio=(to_int_r, to_sol_w),
        )
        r, ir = await asyncio.gather(sol_run, int_run)
        comment = ir.stderr[:PREVIEW].decode(errors="replace").strip()
        if r.status in ("time_limit", "memory_limit", "output_limit", "internal_error"):
            return test_result(i, STATUS_VERDICT[r.status], r)
        if ir.status == "nonzero_exit" and ir.exit_code in CHECKER_REJECTS:
            return test_result(i, "WA", r, comment)
        if ir.signal == signal.SIGPIPE:
            return test_result(i, "WA", r, "the solution stopped reading or exited mid-dialogue")
        if ir.status != "ok":
            return test_result(i, "IE", r, f"the interactor failed ({ir.status}, exit {ir.exit_code}): {comment}")
        if r.status != "ok":
            return test_result(i, STATUS_VERDICT[r.status], r)
        return test_result(i, "AC", r, comment)


async def judge(
    engine: Engine, sub: Submission, progress: Progress | None = None, read: Read | None = None
) -> SubmissionResult:
    """Raises SchemaError for a submission that cannot be judged as given."""
    return await Judge(engine, sub, progress, read).run()
