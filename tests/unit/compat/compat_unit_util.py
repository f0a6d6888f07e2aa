"""What the pure compat tests share: a submission with Judge0's defaults, finished
jobs, and the one part of a Backend that validation reads (the languages served,
from the packaged definitions, and the real callback check)."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

from sandboxd.compat import Served
from sandboxd.compat.judge0 import Request
from sandboxd.jobs import callbacks
from sandboxd.languages import load_dir
from sandboxd.schema import JobInfo, RunResult, SubmissionResult

T = TypeVar("T")
VERSION = "1.2.3"


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def request(**kw: Any) -> Request:
    """A Python submission as the model makes it from {source_code, language_id} alone."""
    fields: dict[str, Any] = {
        "language_id": 71,
        "lang": "python3",
        "source_code": b"print(1)",
        "stdin": None,
        "expected_output": None,
        "compiler_options": None,
        "command_line_arguments": None,
        "number_of_runs": 1,
        "cpu_time_limit": 5.0,
        "cpu_extra_time": 1.0,
        "wall_time_limit": 10.0,
        "memory_limit": 128000,
        "stack_limit": 64000,
        "max_processes_and_or_threads": 60,
        "enable_per_process_and_thread_time_limit": False,
        "enable_per_process_and_thread_memory_limit": False,
        "max_file_size": 1024,
        "redirect_stderr_to_stdout": False,
        "callback_url": None,
        "additional_files": None,
        "enable_network": False,
        "language_name": f"Python ({VERSION})",
    }
    return Request(**{**fields, **kw})


def done(*runs: RunResult, compile: RunResult | None = None, **kw: Any) -> JobInfo:
    """A finished job with these runs (each as the engine returned it)."""
    res = SubmissionResult("AC", compile=compile, runs=list(runs), **kw)
    return JobInfo("t", "submission", "done", result=res, created_at=1700000000.25, finished_at=1700000001.5)


class Languages:
    """The packaged language definitions as a backend serves them, every one detected
    at VERSION; callback targets checked by the callbacks module itself."""

    def __init__(self) -> None:
        self.langs = load_dir()

    async def compat_languages(self) -> dict[str, Served]:
        return {lid: Served(lang, VERSION) for lid, lang in self.langs.items()}

    async def check_callback(self, url: str) -> None:
        await callbacks.check(url, False)
