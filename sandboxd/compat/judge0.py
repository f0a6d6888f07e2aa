"""Judge0 CE 1.13.1's HTTP API on the native engine.

Each submission is one compat job of the backend (see sandboxd.compat): the
daemon's own, or a fleet job through a coordinator.  Compile once (cached,
single flight), then `number_of_runs` runs, each compared with
`expected_output` by Judge0's rule.  A token is the job's id (a UUID); a
submission lives as long as its job (`results_ttl` after it finished), and
every field of it is derived from the job's spec and result.

Request fields, defaults, bounds, validation messages, status ids, field
selection, base64 (Ruby's: 60-character lines, each ending in a newline;
lenient decoding of requests), timestamps, error codes and bodies follow
Judge0 1.13.1's source (models/submission.rb, submissions_controller.rb,
jobs/isolate_job.rb, serializers).

Status mapping (how our run ended -> Judge0 status, exit_code, exit_signal):

    ok, output matches (or no expected_output)  3 Accepted
    ok, output differs                           4 Wrong Answer
    time_limit, or CPU time above cpu_time_limit 5 Time Limit Exceeded
    the compiler failed                          6 Compilation Error (compile_output)
    signaled by SIGSEGV/SIGXFSZ/SIGFPE/SIGABRT   7/8/9/10, exit_signal = the signal
    signaled by any other signal                 12 Runtime Error (Other)
    nonzero_exit                                 11 Runtime Error (NZEC), exit_code
    output_limit (a stream passed max_file_size) 8 Runtime Error (SIGXFSZ), exit_signal 25
    memory_limit                                 as the process ended: 12 (the OOM kill is
                                                 SIGKILL) or 11 (a runtime's own out-of-memory
                                                 error exits nonzero); message
                                                 "Memory limit exceeded"
    bad_syscall (seccomp)                        12 Runtime Error (Other), exit_signal 31
    exec failure (exit 127, "cannot execute")    14 Exec Format Error
    internal_error, a failed or cancelled job    13 Internal Error (message says why)

Memory: Judge0 has no memory-limit status; under its cgroup memory limit an
out-of-memory program is killed by SIGKILL, which Judge0's own status logic
(`determine_status`: a signal other than SEGV/XFSZ/FPE/ABRT) reports as 12
"Runtime Error (Other)", and a runtime that catches its own out-of-memory
error (Java, Python, Node) exits nonzero: 11 NZEC.  We report exactly that,
so clients see the status Judge0 would give the same program, and say
"Memory limit exceeded" in `message` (Judge0 leaves it to the client to
compare `memory` with `memory_limit`).  Signals are reported as Judge0's
status table defines them (7-10, 12), from the signal that ended the program;
Judge0 1.13.1 itself runs programs under a bash script, so a signal death
there often surfaces as 11 with exit code 128+N instead.

Deliberate differences (also in README): `enable_network` and the
per-process limits are refused (`allow_*` false: our limits are cgroup-wide
and boxes have no network), a private `callback_url` is refused (SSRF; the
check of the callbacks module), `additional_files` must be a safe zip
(no absolute or `..` paths, no symlinks, at most `max_extract_size` KB,
1000 entries), a `memory_limit` below 4 MiB runs with 4 MiB, language 89
(multi-file program) is not served, and auth is the daemon's bearer token.
"""

from __future__ import annotations

import asyncio
import math
import os
import platform
import shlex
import sys
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import msgspec
from aiohttp import web

from sandboxd.api.inbound import offload
from sandboxd.api.wire import check_idempotency_key
from sandboxd.compat import Backend, Compiler, Served, put_json, run_program
from sandboxd.compat.archive import decode64, encode64, extract_zip
from sandboxd.engine.engine import Engine
from sandboxd.errors import ServiceError
from sandboxd.judging.judge import STATUS_VERDICT, test_result
from sandboxd.languages import Language
from sandboxd.schema import (
    FileIn,
    JobInfo,
    Limits,
    RunResult,
    SchemaError,
    SubmissionResult,
    TestResult,
    Verdict,
)

VERSION = "1.13.1"
KiB = 1024
MIN_MEMORY = 4 << 20  # the engine's floor; Judge0 allows 2048 KB

# Judge0 language id -> (our language, display name, tool, the Judge0 compiler this id stood for).
# 48/49 and 52/53 are Judge0's older GCC ids (the SDK's CPP alias is 52): served by the same gcc.
LANGUAGES: dict[int, tuple[str, str, str, str]] = {
    46: ("bash", "Bash", "", ""),
    48: ("c", "C", "GCC", "GCC 7.4.0"),
    49: ("c", "C", "GCC", "GCC 8.3.0"),
    50: ("c", "C", "GCC", ""),
    52: ("cpp", "C++", "GCC", "GCC 7.4.0"),
    53: ("cpp", "C++", "GCC", "GCC 8.3.0"),
    54: ("cpp", "C++", "GCC", ""),
    60: ("go", "Go", "", ""),
    62: ("java", "Java", "OpenJDK", ""),
    63: ("javascript", "JavaScript", "Node.js", ""),
    71: ("python3", "Python", "", ""),
    73: ("rust", "Rust", "", ""),
}

STATUSES: dict[int, str] = {
    1: "In Queue",
    2: "Processing",
    3: "Accepted",
    4: "Wrong Answer",
    5: "Time Limit Exceeded",
    6: "Compilation Error",
    7: "Runtime Error (SIGSEGV)",
    8: "Runtime Error (SIGXFSZ)",
    9: "Runtime Error (SIGFPE)",
    10: "Runtime Error (SIGABRT)",
    11: "Runtime Error (NZEC)",
    12: "Runtime Error (Other)",
    13: "Internal Error",
    14: "Exec Format Error",
}
SIGNAL_STATUS = {11: 7, 25: 8, 8: 9, 6: 10}  # Status.find_runtime_error_by_status_code; others: 12
J0_VERDICT: dict[int, Verdict] = {3: "AC", 4: "WA", 5: "TLE", 14: "RE"}  # else from how the run ended

# What Judge0's config_info reports (and what we enforce), in its order.
CONFIG: dict[str, Any] = {
    "maintenance_mode": False,
    "enable_wait_result": True,
    "enable_compiler_options": True,
    "allowed_languages_for_compile_options": [],
    "enable_command_line_arguments": True,
    "enable_submission_delete": True,
    "enable_callbacks": True,
    "callbacks_max_tries": 3,
    "callbacks_timeout": 5.0,
    "enable_additional_files": True,
    "max_queue_size": 0,  # the backend's queue bound
    "cpu_time_limit": 5.0,
    "max_cpu_time_limit": 15.0,
    "cpu_extra_time": 1.0,
    "max_cpu_extra_time": 5.0,
    "wall_time_limit": 10.0,
    "max_wall_time_limit": 20.0,
    "memory_limit": 128000,
    "max_memory_limit": 512000,
    "stack_limit": 64000,
    "max_stack_limit": 128000,
    "max_processes_and_or_threads": 60,
    "max_max_processes_and_or_threads": 120,
    "enable_per_process_and_thread_time_limit": False,
    "allow_enable_per_process_and_thread_time_limit": False,
    "enable_per_process_and_thread_memory_limit": False,
    "allow_enable_per_process_and_thread_memory_limit": False,
    "max_file_size": 1024,
    "max_max_file_size": 4096,
    "number_of_runs": 1,
    "max_number_of_runs": 20,
    "redirect_stderr_to_stdout": False,
    "max_extract_size": 10240,
    "enable_batched_submissions": True,
    "max_submission_batch_size": 20,
    "submission_cache_duration": 0.0,
    "use_docs_as_homepage": False,
    "allow_enable_network": False,
    "enable_network": False,
}

# Numeric fields: (name, integer column?, default, lower bound, lower inclusive?, upper bound), in the
# order the model validates them (the order of keys in a 422 body).
NUMERIC: tuple[tuple[str, bool, float, float, bool, float], ...] = (
    ("number_of_runs", True, 1, 0, False, 20),
    ("cpu_time_limit", False, 5.0, 0, True, 15.0),
    ("cpu_extra_time", False, 1.0, 0, True, 5.0),
    ("wall_time_limit", False, 10.0, 1, True, 20.0),
    ("memory_limit", True, 128000, 2048, True, 512000),
    ("stack_limit", True, 64000, 0, True, 128000),
    ("max_processes_and_or_threads", True, 60, 0, False, 120),
)
PERMITTED = (
    "source_code",
    "language_id",
    "compiler_options",
    "command_line_arguments",
    "number_of_runs",
    "stdin",
    "expected_output",
    "cpu_time_limit",
    "cpu_extra_time",
    "wall_time_limit",
    "memory_limit",
    "stack_limit",
    "max_processes_and_or_threads",
    "enable_per_process_and_thread_time_limit",
    "enable_per_process_and_thread_memory_limit",
    "max_file_size",
    "redirect_stderr_to_stdout",
    "callback_url",
    "additional_files",
    "enable_network",
)
# The serializer's attributes, in its order (`fields=*`), and the default selection.
ATTRIBUTES = (
    "source_code",
    "language_id",
    "stdin",
    "expected_output",
    "stdout",
    "status_id",
    "created_at",
    "finished_at",
    "time",
    "memory",
    "stderr",
    "token",
    "number_of_runs",
    "cpu_time_limit",
    "cpu_extra_time",
    "wall_time_limit",
    "memory_limit",
    "stack_limit",
    "max_processes_and_or_threads",
    "enable_per_process_and_thread_time_limit",
    "enable_per_process_and_thread_memory_limit",
    "max_file_size",
    "compile_output",
    "exit_code",
    "exit_signal",
    "message",
    "wall_time",
    "compiler_options",
    "command_line_arguments",
    "redirect_stderr_to_stdout",
    "callback_url",
    "additional_files",
    "enable_network",
    "status",
    "language",
)
DEFAULT_FIELDS = ("token", "time", "memory", "stdout", "stderr", "compile_output", "message", "status")
TEXT_FIELDS = ("source_code", "stdin", "expected_output", "stdout", "stderr", "compile_output", "message")
NOT_UTF8 = "some attributes for this submission cannot be converted to UTF-8, use base64_encoded=true query parameter"
NOT_UTF8_BATCH = (
    "some attributes for one or more submissions cannot be converted to UTF-8, use base64_encoded=true query parameter"
)
UNSAFE_SHELL = str.maketrans("", "", "$&;<>|`")  # what Judge0 strips from options and arguments


# --- encodings ---------------------------------------------------------------


def decimal(x: float | None) -> str | None:
    """A decimal column as Rails serializes it: "5.0", "0.016"."""
    if x is None:
        return None
    s = f"{x:.6f}".rstrip("0")
    return s + "0" if s.endswith(".") else s


def timestamp(unix: float | None) -> str | None:
    if unix is None:
        return None
    t = datetime.fromtimestamp(unix, UTC)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


def _ruby_num(x: float) -> str:
    return str(x)  # 0 -> "0", 15.0 -> "15.0", as Ruby prints Integer and Float bounds


# --- submissions ------------------------------------------------------------


class Request(msgspec.Struct, tag="judge0", tag_field="api"):
    """A validated submission: every field with its value or Judge0's default.  It is
    the job's spec (kept with the job, in Redis in a fleet), so GET can show it.
    Unknown fields are ignored, so that a spec written by a newer version still
    runs on an older host during a rolling upgrade."""

    language_id: int
    lang: str
    source_code: bytes
    stdin: bytes | None
    expected_output: bytes | None
    compiler_options: str | None
    command_line_arguments: str | None
    number_of_runs: int
    cpu_time_limit: float
    cpu_extra_time: float
    wall_time_limit: float
    memory_limit: int
    stack_limit: int
    max_processes_and_or_threads: int
    enable_per_process_and_thread_time_limit: bool
    enable_per_process_and_thread_memory_limit: bool
    max_file_size: int
    redirect_stderr_to_stdout: bool
    callback_url: str | None
    additional_files: bytes | None
    enable_network: bool
    extras: list[FileIn] = []
    language_name: str = ""  # as /languages named it when the submission was made

    def limits(self) -> Limits:
        """Judge0's isolate limits as ours.  cpu_extra_time: the program is killed at
        cpu_time_limit + cpu_extra_time but is over the limit (TLE) past cpu_time_limit;
        0 means no limit (isolate's convention) for CPU time, stack and file size."""
        wall = self.wall_time_limit
        cpu = self.cpu_time_limit + self.cpu_extra_time if self.cpu_time_limit > 0 else wall
        size = (self.max_file_size or CONFIG["max_max_file_size"]) * KiB
        return Limits(
            cpu_time=max(cpu, 0.001),
            wall_time=wall,
            memory=max(self.memory_limit * KiB, MIN_MEMORY),
            procs=self.max_processes_and_or_threads,
            output=size,
            file_size=size,
            stack=max(self.stack_limit * KiB, 64 * KiB) if self.stack_limit else None,
        )


# --- the job: what a host runs ------------------------------------------------


async def run_job(
    engine: Engine, compiler: Compiler, req: Request, on_run: Callable[[Verdict, RunResult], None]
) -> SubmissionResult:
    """Compile once, then up to `number_of_runs` runs, stopping at the first that is
    not Accepted (as Judge0's worker does).  `outcome` renders the result."""
    # Judge0 pastes both into a bash script; we split them as bash would (quotes, no expansion).
    try:
        options = _words(req.compiler_options)
    except ValueError as e:  # bash: a syntax error in compile.sh, i.e. a compilation error
        return SubmissionResult("CE", message=str(e))
    try:
        args = _words(req.command_line_arguments)
    except ValueError as e:  # bash: a syntax error in run.sh, exit status 2
        return SubmissionResult("RE", message=str(e))
    comp = await compiler.compile(req.lang, req.source_code, req.extras, options)
    c = comp.result
    if not comp.ok:
        assert c is not None
        return SubmissionResult("IE" if c.status == "internal_error" else "CE", compile=c, message=c.message)
    limits = req.limits()
    source = FileIn(comp.lang.source, req.source_code)
    runs: list[RunResult] = []
    tests: list[TestResult] = []
    for i in range(req.number_of_runs):
        r = await run_program(
            engine, comp, source, req.extras, req.stdin or b"", limits, args, req.redirect_stderr_to_stdout
        )
        status, _, _, message = judge_run(r, req)
        verdict = J0_VERDICT.get(status) or STATUS_VERDICT[r.status]
        on_run(verdict, r)
        tests.append(test_result(i, verdict, r, message or ""))
        if runs:
            # Only the last run's output is shown (and every run's time and memory
            # averaged): twenty full outputs would be kept for nothing.
            runs[-1].stdout = runs[-1].stderr = b""
        runs.append(r)
        if status != 3:
            break
    return SubmissionResult(
        tests[-1].verdict,
        compile=c,
        tests=tests,
        time=max(t.time for t in tests),
        memory=max(t.memory for t in tests),
        runs=runs,
    )


@dataclass
class Outcome:
    """What Judge0 stores of a submission after its worker ran: derived from the
    job's state and result, never kept on its own (so every replica shows the same)."""

    status_id: int = 1
    stdout: bytes | None = None
    stderr: bytes | None = None
    compile_output: bytes | None = None
    message: str | None = None
    exit_code: int | None = None
    exit_signal: int | None = None
    time: float | None = None
    wall_time: float | None = None
    memory: int | None = None

    @property
    def pending(self) -> bool:
        return self.status_id in (1, 2)


def outcome(req: Request, info: JobInfo) -> Outcome:
    o = Outcome()
    if info.state in ("queued", "running"):
        o.status_id = 1 if info.state == "queued" else 2
        return o
    res = info.result
    if info.state != "done" or not isinstance(res, SubmissionResult):
        o.status_id = 13
        o.message = info.error.message if info.error is not None else info.state
        return o
    try:
        _words(req.compiler_options)
    except ValueError as e:
        o.status_id, o.compile_output = 6, f"compile.sh: compiler_options: {e}\n".encode()
        return o
    try:
        _words(req.command_line_arguments)
    except ValueError as e:
        o.status_id, o.exit_code, o.message = 11, 2, "Exited with error status 2"
        o.stderr = f"run.sh: command_line_arguments: {e}\n".encode()
        return o
    c = res.compile
    if c is not None:
        o.compile_output = (c.stdout + c.stderr) or None
    if not res.runs:  # the compile failed
        if c is None or c.status == "internal_error":
            o.status_id, o.message = 13, (c.message if c is not None else res.message) or "internal error"
            return o
        if c.status == "time_limit":
            o.compile_output = b"Compilation time limit exceeded."
        o.status_id = 6
        return o
    last = res.runs[-1]
    o.status_id, o.exit_code, o.exit_signal, o.message = judge_run(last, req)
    o.stdout = last.stdout or None
    o.stderr = None if req.redirect_stderr_to_stdout else (last.stderr or None)
    # Judge0 averages time and memory over the runs it made (memory is an integer column).
    o.time = sum(r.cpu_time for r in res.runs) / len(res.runs)
    o.memory = int(sum(r.memory // KiB for r in res.runs) / len(res.runs))
    o.wall_time = last.wall_time
    return o


def view(token: str, req: Request, info: JobInfo, fields: tuple[str, ...], b64: bool) -> dict[str, Any]:
    """The serializer: requested attributes in its order.  Raises UnicodeDecodeError
    for text that is not UTF-8 when base64_encoded is false (Judge0's 400)."""
    o = outcome(req, info)
    want = set(fields)
    return {name: _attr(token, req, info, o, name, b64) for name in ATTRIBUTES if name in want}


def _attr(token: str, req: Request, info: JobInfo, o: Outcome, name: str, b64: bool) -> Any:
    if name in TEXT_FIELDS:
        v: bytes | None
        if name in ("source_code", "stdin", "expected_output"):
            v = getattr(req, name)
        elif name == "message":
            v = None if o.message is None else o.message.encode()
        else:
            v = getattr(o, name)
        if v is None:
            return None
        return encode64(v) if b64 else v.decode("utf-8")
    match name:
        case "language_id":
            return req.language_id
        case "status_id":
            return o.status_id
        case "status":
            return {"id": o.status_id, "description": STATUSES[o.status_id]}
        case "language":
            return {"id": req.language_id, "name": req.language_name}
        case "created_at":
            return timestamp(info.created_at)
        case "finished_at":
            return None if o.pending else timestamp(info.finished_at)
        case "time":
            return decimal(o.time)
        case "wall_time":
            return decimal(o.wall_time)
        case "memory":
            return o.memory
        case "token":
            return token
        case "exit_code":
            return o.exit_code
        case "exit_signal":
            return o.exit_signal
        case "cpu_time_limit" | "cpu_extra_time" | "wall_time_limit":
            return decimal(getattr(req, name))
        case "additional_files":
            return None if req.additional_files is None else encode64(req.additional_files)
    return getattr(req, name)


async def deliver_callback(token: str, req: Request, info: JobInfo, allow_private: bool) -> None:
    """PUT the default fields (base64) to `callback_url` once the job is final and
    readable; called by whoever made it final (the daemon, or the fleet host)."""
    if not req.callback_url:
        return
    body = msgspec.json.encode(view(token, req, info, DEFAULT_FIELDS, True))
    await put_json(req.callback_url, body, allow_private, CONFIG["callbacks_max_tries"], CONFIG["callbacks_timeout"])


class J0Error(Exception):
    """An HTTP answer other than success: status and JSON body (None: empty body)."""

    def __init__(self, status: int, body: Any = None) -> None:
        super().__init__(status)
        self.status, self.body = status, body


def reply(body: Any, status: int = 200) -> web.Response:
    if body is None:
        return web.Response(status=status)
    return web.Response(body=msgspec.json.encode(body), status=status, content_type="application/json")


# --- the API: validation and records, on a Backend --------------------------------


class Judge0:
    def __init__(self, backend: Backend) -> None:
        self.backend = backend

    # --- languages ---

    async def languages(self) -> dict[int, Served]:
        served = await self.backend.compat_languages()
        return {jid: served[lid] for jid, (lid, *_) in LANGUAGES.items() if lid in served}

    @staticmethod
    def language_name(jid: int, version: str) -> str:
        _lid, name, tool, stood_for = LANGUAGES[jid]
        inner = " ".join(p for p in (tool, version) if p)
        if stood_for:
            inner = f"{inner}, in place of {stood_for}" if inner else f"in place of {stood_for}"
        return f"{name} ({inner})" if inner else name

    def language_detail(self, jid: int, s: Served) -> dict[str, Any]:
        lang = s.lang
        return {
            "id": jid,
            "name": self.language_name(jid, s.version),
            "is_archived": False,
            "source_file": lang.source,
            "compile_cmd": f"{shlex.join(lang.compile)} %s" if lang.compile else None,
            "run_cmd": shlex.join(lang.run_argv(lang.default_limits.memory)),
        }

    # --- validation: Judge0's model, message for message ---

    async def build(self, params: Mapping[str, Any], b64: bool) -> Request | dict[str, list[str]]:
        raw: dict[str, Any] = {}
        for k in PERMITTED:
            v = params.get(k)
            raw[k] = None if isinstance(v, (list, dict)) else v  # Rails' permit drops non-scalars
        errors: dict[str, list[str]] = {}

        def add(name: str, msg: str) -> None:
            errors.setdefault(name, []).append(msg)

        # Decoded off the event loop when large (up to max_body of base64).
        texts = await offload(sum(len(v) for v in raw.values() if isinstance(v, str)), _texts, raw, b64)
        source, stdin, expected, additional = (texts[k] for k in _TEXTS)

        if source is None or not source.strip():
            add("source_code", "can't be blank")
        lid_raw = raw["language_id"]
        language_id = _int_cast(lid_raw)
        if lid_raw is None or (isinstance(lid_raw, str) and not lid_raw.strip()):
            add("language_id", "can't be blank")

        values: dict[str, Any] = {}
        for name, integer, default, lo, lo_incl, hi in NUMERIC:
            v, bad = _number(raw[name])
            if v is None and not bad:
                v = default
            if bad:
                add(name, "is not a number")
            else:
                assert v is not None
                if lo_incl and v < lo:
                    add(name, f"must be greater than or equal to {_ruby_num(lo)}")
                elif not lo_incl and v <= lo:
                    add(name, f"must be greater than {_ruby_num(lo)}")
                elif v > hi:
                    add(name, f"must be less than or equal to {_ruby_num(hi)}")
            values[name] = (int(v) if integer else float(v)) if v is not None else default
        values["number_of_runs"] = max(1, values["number_of_runs"])  # 0.5 passes "> 0"; runs at least once
        for name in ("enable_per_process_and_thread_time_limit", "enable_per_process_and_thread_memory_limit"):
            values[name] = _bool(raw[name], CONFIG[name])
            if values[name] and not CONFIG[f"allow_{name}"]:
                add(name, "this option cannot be enabled")
        v, bad = _number(raw["max_file_size"])
        if bad:
            add("max_file_size", "is not a number")
        elif v is not None and v < 0:
            add("max_file_size", "must be greater than or equal to 0")
        elif v is not None and v > CONFIG["max_max_file_size"]:
            add("max_file_size", f"must be less than or equal to {CONFIG['max_max_file_size']}")
        values["max_file_size"] = int(v) if v is not None else CONFIG["max_file_size"]
        strings: dict[str, str | None] = {}
        for name in ("compiler_options", "command_line_arguments"):
            s = raw[name]
            strings[name] = None if s is None else (s if isinstance(s, str) else _scalar_str(s))
            if strings[name] is not None and len(strings[name] or "") > 512:
                add(name, "is too long (maximum is 512 characters)")

        # The model's custom validations, in order.
        lang: Language | None = None
        served = (await self.languages()).get(language_id) if language_id is not None else None
        if served is not None:
            lang = served.lang
        if lang is None:
            add("language_id", f"language with id {'' if language_id is None else language_id} doesn't exist")
        options = strings["compiler_options"]
        if options and options.strip() and lang is not None and not lang.compile:
            add("compiler_options", "setting compiler options is only allowed for compiled languages")
        callback = raw["callback_url"]
        callback_url = None if callback is None else (callback if isinstance(callback, str) else _scalar_str(callback))
        if callback_url and callback_url.strip():
            try:
                await self.backend.check_callback(callback_url)
            except ServiceError as e:
                add("callback_url", e.err.message.removeprefix("callback_url: "))
        extras: list[FileIn] = []
        if additional:
            try:
                max_bytes, source_file = CONFIG["max_extract_size"] * KiB, lang.source if lang else ""
                extras = await offload(len(additional), extract_zip, additional, max_bytes, source_file)
            except SchemaError as e:
                add("additional_files", str(e))
        enable_network = _bool(raw["enable_network"], CONFIG["enable_network"])
        if enable_network and not CONFIG["allow_enable_network"]:
            add("enable_network", "enabling network is not allowed")
        if errors:
            return errors
        assert served is not None and language_id is not None and source is not None
        return Request(
            language_id=language_id,
            lang=served.lang.id,
            source_code=source,
            stdin=stdin,
            expected_output=expected,
            compiler_options=strings["compiler_options"],
            command_line_arguments=strings["command_line_arguments"],
            redirect_stderr_to_stdout=_bool(raw["redirect_stderr_to_stdout"], CONFIG["redirect_stderr_to_stdout"]),
            callback_url=callback_url,
            additional_files=additional,
            enable_network=enable_network,
            extras=extras,
            language_name=self.language_name(language_id, served.version),
            **values,
        )

    # --- records: the backend's jobs ---

    async def create(self, req: Request, idempotency_key: str | None = None) -> str:
        """The new submission's token; with a key already used for this request, that one's."""
        info = await self.backend.start_compat(req, str(uuid.uuid4()), idempotency_key=idempotency_key)
        return info.job

    async def get(self, token: str) -> tuple[Request, JobInfo] | None:
        found = await self.backend.compat_job(token)
        if found is None or not isinstance(found[0], Request):
            return None
        return found[0], found[1]


_TEXTS = ("source_code", "stdin", "expected_output", "additional_files")


def _texts(raw: Mapping[str, Any], b64: bool) -> dict[str, bytes | None]:
    out: dict[str, bytes | None] = {}
    for name in _TEXTS:
        v = raw[name]
        if v is None:
            out[name] = None
            continue
        s = v if isinstance(v, str) else _scalar_str(v)
        decode = b64 or name == "additional_files"  # always base64, whatever base64_encoded says
        # (A str from a form or from msgspec is valid UTF-8; surrogatepass keeps any other safe.)
        out[name] = decode64(s) if decode else s.encode("utf-8", "surrogatepass")
    return out


def _words(s: str | None) -> list[str]:
    return shlex.split(s.translate(UNSAFE_SHELL)) if s else []


def _scalar_str(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def _number(v: Any) -> tuple[float | None, bool]:
    """(value, not-a-number?) as Rails' numericality sees a raw parameter; None/""/false: unset."""
    if v is None or v is False or (isinstance(v, str) and not v.strip()):
        return None, False
    if v is True:
        return None, True
    if isinstance(v, (int, float)):
        return (float(v), False) if math.isfinite(v) else (None, True)
    if isinstance(v, str):
        try:
            f = float(v.strip())
        except ValueError:
            return None, True
        return (f, False) if math.isfinite(f) else (None, True)
    return None, True


def _int_cast(v: Any) -> int | None:
    if isinstance(v, bool) or v is None:
        return None
    if isinstance(v, int):
        return v
    if isinstance(v, float):
        return int(v) if math.isfinite(v) else None
    if isinstance(v, str):
        try:
            f = float(v.strip())
        except ValueError:
            return None
        return int(f) if math.isfinite(f) else None
    return None


_FALSE = frozenset({"0", "f", "F", "false", "FALSE", "off", "OFF"})


def _bool(v: Any, default: bool) -> bool:
    """ActiveModel's boolean cast; nil and "" take the default."""
    if v is None or v == "":
        return default
    if isinstance(v, bool):
        return v
    if isinstance(v, (int, float)):
        return v != 0
    return str(v) not in _FALSE


def judge_run(r: RunResult, req: Request) -> tuple[int, int | None, int | None, str | None]:
    """(status id, exit_code, exit_signal, message) of one run, as Judge0 would report it."""
    code = r.exit_code if r.exit_code is not None else 0  # Judge0: `exitcode || 0`
    sig = r.signal
    if r.status == "internal_error":
        return 13, None, None, r.message or "internal error"
    over_time = req.cpu_time_limit > 0 and r.cpu_time > req.cpu_time_limit
    if r.status == "time_limit" or over_time:
        wall = r.status == "time_limit" and "wall" in r.message
        return 5, code, sig, "Time limit exceeded (wall clock)" if wall else "Time limit exceeded"
    if r.status == "nonzero_exit" and r.exit_code == 127 and r.message.startswith("cannot execute"):
        return 14, code, None, r.message
    if r.status == "memory_limit":
        if sig is not None:
            return SIGNAL_STATUS.get(sig, 12), code, sig, "Memory limit exceeded"
        return 11, code, None, "Memory limit exceeded"
    if r.status == "output_limit":
        return 8, code, 25, "Output limit exceeded"  # isolate's -f ends the program with SIGXFSZ
    if r.status == "bad_syscall":
        return 12, code, sig, f"Caught fatal signal {sig} (a forbidden system call)"
    if r.status == "signaled":
        assert sig is not None
        return SIGNAL_STATUS.get(sig, 12), code, sig, f"Caught fatal signal {sig}"
    if r.status == "nonzero_exit":
        return 11, code, None, f"Exited with error status {r.exit_code}"
    if req.expected_output is None or _strip(req.expected_output) == _strip(r.stdout or None):
        return 3, code, None, None
    return 4, code, None, None


_WS = b" \t\n\v\f\r\0"  # what Ruby's rstrip removes


def _strip(text: bytes | None) -> bytes | None:
    """isolate_job.rb's `strip`: each line right-stripped, joined, right-stripped; a text
    that is not UTF-8 is compared as it is (Ruby's split raises, the rescue returns it)."""
    if text is None:
        return None
    try:
        text.decode("utf-8")
    except UnicodeDecodeError:
        return text
    return b"\n".join(line.rstrip(_WS) for line in text.split(b"\n")).rstrip(_WS)


# --- HTTP ------------------------------------------------------------------

J0: web.AppKey[Judge0] = web.AppKey("judge0", Judge0)


def _b64(req: web.Request) -> bool:
    return req.query.get("base64_encoded") == "true"  # v1.13.1: only the string "true"


def _fields(req: web.Request) -> tuple[str, ...]:
    raw = req.query.get("fields", "")
    names = [f.strip() for f in raw.split(",") if f.strip()]
    if not names:
        return DEFAULT_FIELDS
    if "*" in names:
        return ATTRIBUTES
    bad = [f for f in names if f not in ATTRIBUTES]
    if bad:
        raise J0Error(400, {"error": f"invalid fields: [{', '.join(bad)}]"})
    return tuple(names)


async def _params(req: web.Request) -> dict[str, Any]:
    """Rails' params: query parameters, overridden by a JSON (or form) body."""
    params: dict[str, Any] = dict(req.query)
    try:
        body = await req.read()
    except web.HTTPRequestEntityTooLarge:
        raise J0Error(413, {"error": f"request body larger than {req.client_max_size} bytes"}) from None
    if not body:
        return params
    if req.content_type == "application/x-www-form-urlencoded":
        params.update((await req.post()).items())
        return params
    try:
        data = await offload(len(body), msgspec.json.decode, body)
    except (msgspec.DecodeError, msgspec.ValidationError) as e:  # (ValidationError: a number out of range)
        raise J0Error(400, {"error": f"invalid JSON body: {e}"}) from None
    except RecursionError:
        depth = sys.getrecursionlimit()
        raise J0Error(400, {"error": f"invalid JSON body: nested deeper than {depth} levels"}) from None
    if not isinstance(data, dict):
        raise J0Error(400, {"error": "the body must be a JSON object"})
    params.update(data)
    return params


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def handler(fn: Handler) -> Handler:
    async def wrapped(req: web.Request) -> web.StreamResponse:
        try:
            return await fn(req)
        except J0Error as e:
            return reply(e.body, e.status)
        except ServiceError as e:
            status = {"draining": 503, "queue_full": 503, "conflict": 422}.get(e.err.code, 400)
            return reply({"error": e.err.message}, status)

    return wrapped


async def _queue_check(j0: Judge0, n: int) -> None:
    load = await j0.backend.compat_load()
    if load.queued + n > load.limit:
        raise J0Error(503, {"error": "queue is full"})


@handler
async def create_submission(req: web.Request) -> web.Response:
    j0 = req.app[J0]
    wait = req.query.get("wait") == "true"
    key = check_idempotency_key(req.headers.get("Idempotency-Key"), "Idempotency-Key header")
    await _queue_check(j0, 1)
    fields = _fields(req)
    b64 = _b64(req)
    built = await j0.build(await _params(req), b64)
    if not isinstance(built, Request):
        return reply(built, 422)
    token = await j0.create(built, key)
    if not wait:
        return reply({"token": token}, 201)
    info = await j0.backend.wait_job(token)
    # Read back: the record as every later GET shows it (a fleet's times are Redis's).
    found = await j0.get(token)
    try:
        return reply(view(token, *(found or (built, info)), fields, b64), 201)
    except UnicodeDecodeError:
        return reply({"error": NOT_UTF8, "token": token}, 201)


@handler
async def get_submission(req: web.Request) -> web.Response:
    j0 = req.app[J0]
    fields = _fields(req)
    token = req.match_info["token"]
    found = await j0.get(token)
    if found is None:
        return reply(None, 404)
    try:
        return reply(view(token, *found, fields, _b64(req)))
    except UnicodeDecodeError:
        return reply({"error": NOT_UTF8}, 400)


@handler
async def delete_submission(req: web.Request) -> web.Response:
    j0 = req.app[J0]
    fields = _fields(req)
    token = req.match_info["token"]
    found = await j0.get(token)
    if found is None:
        return reply(None, 404)
    o = outcome(*found)
    gone = "pending" if o.pending else await j0.backend.forget_job(token)
    if gone == "missing":  # deleted by someone else a moment ago
        return reply(None, 404)
    if gone == "pending":
        sid = o.status_id
        raise J0Error(400, {"error": f"submission cannot be deleted because its status is {sid} ({STATUSES[sid]})"})
    return reply(view(token, *found, fields, True))  # base64 forced: the data must survive the delete


@handler
async def list_submissions(req: web.Request) -> web.Response:
    return reply(None, 403)  # Judge0 requires authorization (X-Auth-User) to list all submissions


@handler
async def batch_create(req: web.Request) -> web.Response:
    j0 = req.app[J0]
    b64 = _b64(req)
    params = await _params(req)
    subs = params.get("submissions")
    n = len(subs) if isinstance(subs, (list, dict)) else 0
    await _queue_check(j0, n or 1)
    limit = CONFIG["max_submission_batch_size"]
    if n > limit:
        raise J0Error(400, {"error": f"number of submissions in a batch should be less than or equal to {limit}"})
    if n == 0:
        raise J0Error(400, {"error": "there should be at least one submission in a batch"})
    items = subs if isinstance(subs, list) else list(subs.values())  # type: ignore[union-attr]
    built = [await j0.build(item if isinstance(item, dict) else {}, b64) for item in items]
    out: list[Any] = []
    for b in built:
        out.append({"token": await j0.create(b)} if isinstance(b, Request) else b)
    return reply(out, 201 if any(isinstance(b, Request) for b in built) else 422)


@handler
async def batch_show(req: web.Request) -> web.Response:
    j0 = req.app[J0]
    fields = _fields(req)
    raw = req.headers.get("tokens") or req.query.get("tokens", "")
    tokens = [t for t in raw.strip().split(",") if t]
    limit = CONFIG["max_submission_batch_size"]
    if len(tokens) > limit:
        raise J0Error(400, {"error": f"number of submissions in a batch should be less than or equal to {limit}"})
    if not tokens:
        raise J0Error(400, {"error": "there should be at least one submission in a batch"})
    b64 = _b64(req)
    found = await asyncio.gather(*(j0.get(t) for t in tokens))
    try:
        out = [None if f is None else view(t, *f, fields, b64) for t, f in zip(tokens, found, strict=True)]
    except UnicodeDecodeError:
        raise J0Error(400, {"error": NOT_UTF8_BATCH}) from None
    return reply({"submissions": out})


@handler
async def languages(req: web.Request) -> web.Response:
    j0 = req.app[J0]
    out = [{"id": jid, "name": j0.language_name(jid, s.version)} for jid, s in (await j0.languages()).items()]
    return reply(sorted(out, key=lambda x: str(x["name"])))


@handler
async def languages_all(req: web.Request) -> web.Response:
    j0 = req.app[J0]
    langs = await j0.languages()
    out = [{"id": jid, "name": j0.language_name(jid, s.version), "is_archived": False} for jid, s in langs.items()]
    return reply(sorted(out, key=lambda x: str(x["name"])))


@handler
async def language(req: web.Request) -> web.Response:
    j0 = req.app[J0]
    jid = _int_cast(req.match_info["id"])
    langs = await j0.languages()
    if jid is None or jid not in langs:
        return reply(None, 404)
    return reply(j0.language_detail(jid, langs[jid]))


@handler
async def statuses(req: web.Request) -> web.Response:
    return reply([{"id": i, "description": d} for i, d in STATUSES.items()])


@handler
async def about(req: web.Request) -> web.Response:
    return reply(
        {
            "version": VERSION,
            "homepage": "sandboxd: Judge0 CE compatible API",
            "source_code": "sandboxd/compat/judge0.py",
            "maintainer": "sandboxd",
        }
    )


async def version(req: web.Request) -> web.Response:
    return web.Response(text=VERSION)


async def isolate(req: web.Request) -> web.Response:
    return web.Response(text="sandboxd: Linux namespaces, cgroups and seccomp (no isolate)\n")


async def license_(req: web.Request) -> web.Response:
    return web.Response(text="Apache-2.0 (sandboxd)\n")


@handler
async def config_info(req: web.Request) -> web.Response:
    load = await req.app[J0].backend.compat_load()
    return reply({**CONFIG, "max_queue_size": load.limit})


@handler
async def system_info(req: web.Request) -> web.Response:
    return reply(system_facts())


@handler
async def workers(req: web.Request) -> web.Response:
    return reply((await req.app[J0].backend.compat_load()).workers)


def system_facts() -> dict[str, str]:
    """What Judge0 reads from `lscpu` and `free -h`, from /proc."""
    facts = {"Architecture": platform.machine(), "CPU(s)": str(os.cpu_count() or 1)}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                k, _, v = line.partition(":")
                if k.strip() == "model name":
                    facts["Model name"] = v.strip()
                    break
    except OSError:
        pass
    mem: dict[str, int] = {}
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                k, _, v = line.partition(":")
                mem[k] = int(v.split()[0]) * KiB
    except (OSError, ValueError, IndexError):
        pass
    for key, name in (("MemTotal", "Mem"), ("SwapTotal", "Swap")):
        if key in mem:
            facts[name] = f"{mem[key] / (1 << 30):.1f}Gi"
    return facts


def make_app(backend: Backend, **app_args: Any) -> web.Application:
    """The Judge0 API as a sub-application (mounted under `judge0_prefix`), or an app of its own
    (at the root of `judge0_http`; app_args: middlewares, client_max_size)."""
    app = web.Application(**app_args)
    app[J0] = Judge0(backend)
    r = app.router
    r.add_post("/submissions/batch", batch_create)
    r.add_get("/submissions/batch", batch_show)
    r.add_post("/submissions", create_submission)
    r.add_get("/submissions", list_submissions)
    r.add_get("/submissions/{token}", get_submission)
    r.add_delete("/submissions/{token}", delete_submission)
    r.add_get("/languages", languages)
    r.add_get("/languages/all", languages_all)
    r.add_get("/languages/{id}", language)
    r.add_get("/statuses", statuses)
    r.add_get("/about", about)
    r.add_get("/version", version)
    r.add_get("/isolate", isolate)
    r.add_get("/license", license_)
    r.add_get("/config_info", config_info)
    r.add_get("/system_info", system_info)
    r.add_get("/workers", workers)
    return app
