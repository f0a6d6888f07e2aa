"""`sandboxd submit`: judge a source file against a directory of tests, with a progress bar."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import msgspec

from sandboxd.schema import Checker, Limits, MiB, Submission, TestCase, TestResult

from .client import Client, SandboxdError


def load_tests(d: Path) -> list[TestCase]:
    """`NAME.in` with `NAME.out` (or `.ans`) beside it, in natural order of NAME."""
    ins = sorted(d.glob("*.in"), key=lambda p: (len(p.stem), p.stem))
    tests = []
    for f in ins:
        ans = next((p for p in (f.with_suffix(".out"), f.with_suffix(".ans")) if p.exists()), None)
        tests.append(TestCase(f.read_bytes(), ans.read_bytes() if ans else None))
    if not tests:
        raise ValueError(f"{d}: no *.in files")
    return tests


class Bar:
    def __init__(self, total: int, out: object = sys.stderr) -> None:
        self.total = total
        self.done = 0
        self.fails = 0
        self.out = out
        self.tty = bool(getattr(out, "isatty", lambda: False)())

    def __call__(self, t: TestResult) -> None:
        self.done += 1
        self.fails += t.verdict != "AC"
        if self.tty:
            width = 30
            filled = width * self.done // self.total
            line = f"\r[{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total}  failed {self.fails}"
            print(line, end="", file=self.out, flush=True)  # type: ignore[call-overload]

    def finish(self) -> None:
        if self.tty:
            print(file=self.out)  # type: ignore[call-overload]


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("submit", help="judge a source file against a directory of tests (via a daemon)")
    p.add_argument("--lang", required=True)
    p.add_argument("--tests", required=True, type=Path, help="directory of NAME.in + NAME.out/NAME.ans")
    p.add_argument("--checker", default="tokens", choices=["exact", "tokens", "lines", "float"])
    p.add_argument("--time", type=float, default=2.0, help="CPU seconds per test")
    p.add_argument("--memory", type=int, default=256, help="MiB per test")
    p.add_argument("--priority", type=int, default=0)
    p.add_argument("--stop-on-first-failure", action="store_true")
    p.add_argument("--address", default=os.environ.get("SANDBOXD_ADDRESS", "unix:///run/sandboxd/sandboxd.sock"))
    p.add_argument("--token", default=os.environ.get("SANDBOXD_TOKEN"))
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("source", type=Path)


def main(ns: argparse.Namespace) -> int:
    try:
        tests = load_tests(ns.tests)
        source = ns.source.read_bytes()
        sub = Submission(
            lang=ns.lang,
            source=source,
            tests=tests,
            limits=Limits(cpu_time=ns.time, memory=ns.memory * MiB),
            checker=Checker(kind=ns.checker),
            priority=ns.priority,
            stop_on_first_failure=ns.stop_on_first_failure,
        )
    except (OSError, ValueError, msgspec.ValidationError) as e:
        print(f"sandboxd: {e}", file=sys.stderr)
        return 2
    bar = Bar(len(tests))
    try:
        with Client(ns.address, ns.token) as c:
            res = c.submit(sub, progress=bar)
    except SandboxdError as e:
        bar.finish()
        print(f"sandboxd: {e}", file=sys.stderr)
        return 2 if e.code == "bad_request" else 1
    except OSError as e:
        print(f"sandboxd: cannot reach the daemon at {ns.address}: {e}", file=sys.stderr)
        return 1
    bar.finish()
    if ns.json:
        print(msgspec.json.encode(res).decode())
    else:
        if res.compile is not None and res.verdict == "CE":
            sys.stderr.write((res.compile.stdout + res.compile.stderr).decode(errors="replace"))
        for t in res.tests:
            note = f"  {t.message}" if t.message and t.verdict != "AC" else ""
            print(f"test {t.index + 1:>3}: {t.verdict:<3} {t.time:.3f}s {t.memory / MiB:.1f}MiB{note}")
        print(f"verdict: {res.verdict}  max time {res.time:.3f}s  max memory {res.memory / MiB:.1f}MiB")
    return 0 if res.verdict == "AC" else 1
