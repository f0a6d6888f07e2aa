"""Piston v2's HTTP API (`POST /api/v2/execute`, `GET /api/v2/runtimes`) on the native engine.

One execute request is one compat job of the backend (see sandboxd.compat:
the daemon's own, or a fleet job through a coordinator): the cached compile,
then one run, answered synchronously.  Request validation and
its messages, the 415 for a body that is not JSON, defaults, the stage objects
(`signal, stdout, stderr, code, output, memory, message, status, cpu_time,
wall_time`), `run` repeating `compile` when the compile failed, and the
trailing newline Piston adds to stdin follow Piston's api/src/api/v2.js and
job.js.

Stage status mapping (how our run ended -> status, code, signal):

    ok               null, 0, null
    nonzero_exit     "RE", the exit code, null   (also an exec failure: 127)
    signaled         "SG", null, the signal's name
    bad_syscall      "SG", null, "SIGSYS"
    time_limit       "TO", null, "SIGKILL"       (message: wall clock or not)
    output_limit     "OL" (stdout) / "EL" (stderr), null, "SIGKILL"; a file past the
                     file-size limit: "SG", "SIGXFSZ"
    memory_limit     as the process ended ("SG" + SIGKILL for the OOM kill, "RE" for a
                     runtime's own out-of-memory exit), message "Memory limit exceeded"
    internal_error   "XX", null, null, with the message

Limits: `*_timeout` is wall time and `*_cpu_time` CPU time in ms, `*_memory_limit`
bytes.  The configured limit of each (a request above it is the 400 Piston
gives) is the language's maximum; a run defaults to 3000 ms CPU and 5000 ms
wall, a compile to the language's compile limits.  A negative memory limit
(Piston's -1, "none", which its clients send by default) means the
language's default memory.  Output is capped at the language's output limit
(1 MiB per stream by default, where Piston's default is 1 KB).

Known differences (also in README): `output` is stdout followed by stderr (the
engine captures the streams separately, so their interleaving is not kept); a
compiled language compiles its entry file (other files are present, e.g.
headers, but not compiled); Java's entry class must be `Main` (javac compiles
Main.java); version "0.0.0" stands for a version not detected (self-test off).
"""

from __future__ import annotations

import posixpath
import re
import signal
import sys
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from aiohttp import web

from sandboxd.api.inbound import offload
from sandboxd.compat import Backend, Compiler, Served, run_program
from sandboxd.compat.archive import decode64
from sandboxd.engine.engine import Engine
from sandboxd.errors import ServiceError
from sandboxd.judging.judge import STATUS_VERDICT, test_result
from sandboxd.languages import Language
from sandboxd.schema import (
    MAX_MEMORY,
    FileIn,
    JobInfo,
    Limits,
    RunResult,
    SchemaError,
    SubmissionResult,
    Verdict,
    check_box_path,
)

MiB = 1 << 20
RUN_CPU_MS = 3000
RUN_WALL_MS = 5000

# Our language -> (Piston language name, aliases, runtime).  Others: their own id.
RUNTIMES: dict[str, tuple[str, list[str], str | None]] = {
    "bash": ("bash", ["sh"], None),
    "c": ("c", ["gcc"], "gcc"),
    "cpp": ("c++", ["cpp", "g++"], "gcc"),
    "cpp20": ("c++20", ["cpp20", "g++20"], "gcc"),
    "go": ("go", ["go", "golang"], None),
    "java": ("java", [], None),
    "javascript": ("javascript", ["node-javascript", "node-js", "javascript", "js"], "node"),
    "python3": ("python", ["py", "py3", "python3"], None),
    "rust": ("rust", ["rs"], None),
}


class PistonError(Exception):
    def __init__(self, status: int, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status, self.body = status, {"message": message, **extra}


def reply(body: Any, status: int = 200) -> web.Response:
    return web.Response(body=msgspec.json.encode(body), status=status, content_type="application/json")


# --- runtimes and version selectors ---------------------------------------


class Runtime(msgspec.Struct):
    lang: Language
    language: str
    version: str
    aliases: list[str]
    runtime: str | None


def runtimes(served: dict[str, Served]) -> list[Runtime]:
    out = []
    for lid, s in sorted(served.items()):
        name, aliases, rt = RUNTIMES.get(lid, (lid, [], None))
        if lid != name and lid not in aliases:
            aliases = [*aliases, lid]
        out.append(Runtime(s.lang, name, s.version if _parse(s.version) else "0.0.0", aliases, rt))
    return out


def _parse(v: str) -> tuple[int, int, int] | None:
    m = re.fullmatch(r"v?(\d+)(?:\.(\d+))?(?:\.(\d+))?(?:[-+].*)?", v.strip())
    if not m:
        return None
    return int(m[1]), int(m[2] or 0), int(m[3] or 0)


def satisfies(version: str, selector: str) -> bool:
    """node-semver's `satisfies` for the common ranges: *, x-ranges (3, 3.11, 3.x),
    exact versions, comparators (>=, >, <=, <, =), ~ and ^, AND (space) and OR (||)."""
    v = _parse(version)
    if v is None:
        return False
    if not selector.strip():
        return True
    return any(all(_comparator(v, c) for c in alt.split()) for alt in selector.split("||") if alt.strip())


def _comparator(v: tuple[int, int, int], c: str) -> bool:
    m = re.fullmatch(r"(>=|<=|>|<|=|~|\^)?v?(\d+|[xX*])(?:\.(\d+|[xX*]))?(?:\.(\d+|[xX*]))?(?:[-+].*)?", c)
    if not m:
        return False
    op = m[1] or ""
    n: list[int] = []
    for p in (m[2], m[3], m[4]):
        if p is None or p in ("x", "X", "*"):
            break
        n.append(int(p))
    if not n:  # *, x: any version (nothing is below or above "any")
        return op not in ("<", ">")
    padded = [*n, 0, 0, 0]
    low = padded[0], padded[1], padded[2]

    def bump(i: int) -> tuple[int, int, int]:
        b = [*n[: i + 1], 0, 0, 0]
        b[i] += 1
        return b[0], b[1], b[2]

    partial = len(n) < 3
    upper = bump(len(n) - 1)  # the end of the x-range n.*
    if op in ("", "="):
        return low <= v < upper if partial else v == low
    if op == ">=":
        return v >= low
    if op == ">":
        return v >= upper if partial else v > low
    if op == "<":
        return v < low
    if op == "<=":
        return v < upper if partial else v <= low
    if op == "~":
        return low <= v < bump(min(1, len(n) - 1))
    # ^: the leftmost nonzero part given may not change
    i = next((k for k, p in enumerate(n) if p != 0), len(n) - 1)
    return low <= v < bump(i)


def find_runtime(served: dict[str, Served], language: str, version: str) -> Runtime | None:
    """runtime.get_latest_runtime_matching_language_version."""
    found = [
        rt
        for rt in runtimes(served)
        if (rt.language == language or language in rt.aliases) and satisfies(rt.version, version)
    ]
    return max(found, key=lambda rt: _parse(rt.version) or (0, 0, 0), default=None)


# --- limits ----------------------------------------------------------------


def configured(lang: Language) -> dict[str, dict[str, int]]:
    """The configured limit of each constraint (Piston's rt.timeouts, cpu_times, memory_limits)."""
    cl, mx = lang.compile_limits, lang.max_limits
    run_cpu = mx.cpu_time if mx.cpu_time is not None else 30.0
    run_wall = mx.wall_time if mx.wall_time is not None else 2 * run_cpu + 1
    return {
        "timeout": {"compile": round(cl.wall * 1000), "run": round(run_wall * 1000)},
        "cpu_time": {"compile": round(cl.cpu_time * 1000), "run": round(run_cpu * 1000)},
        "memory_limit": {"compile": cl.memory, "run": mx.memory if mx.memory is not None else MAX_MEMORY},
    }


def limits(lang: Language, body: dict[str, Any]) -> tuple[Limits | None, Limits]:
    """(compile limits or None for the language's own, run limits); PistonError(400) as Piston."""
    conf = configured(lang)
    given: dict[str, float] = {}
    for constraint in ("memory_limit", "timeout", "cpu_time"):
        for typ in ("compile", "run"):
            name = f"{typ}_{constraint}"
            value = body.get(name)
            if not value:  # Piston: `if (!constraint_value) continue`
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise PistonError(400, f"If specified, {name} must be a number")
            if constraint == "memory_limit" and value < 0:
                continue  # -1: no limit of its own, i.e. the language's default memory
            limit = conf[constraint][typ]
            if value > limit:
                raise PistonError(400, f"{name} cannot exceed the configured limit of {limit}")
            if value < 0:
                raise PistonError(400, f"{name} must be non-negative")
            given[name] = float(value)
    comp: Limits | None = None
    if any(k.startswith("compile_") for k in given):
        cl = lang.compile_limits
        comp = msgspec.structs.replace(
            cl,
            cpu_time=given.get("compile_cpu_time", cl.cpu_time * 1000) / 1000,
            wall_time=given.get("compile_timeout", cl.wall * 1000) / 1000,
            memory=max(int(given.get("compile_memory_limit", cl.memory)), 4 * MiB),
        )
    d = lang.default_limits
    run = msgspec.structs.replace(
        d,
        cpu_time=given.get("run_cpu_time", RUN_CPU_MS) / 1000,
        wall_time=given.get("run_timeout", RUN_WALL_MS) / 1000,
        memory=max(int(given.get("run_memory_limit", d.memory)), 4 * MiB),
    )
    return comp, run


# --- files -----------------------------------------------------------------


def _hex(s: str) -> bytes:
    """Node's Buffer.from(s, 'hex'): pairs until the first that is not hex."""
    out = bytearray()
    for i in range(0, len(s) - 1, 2):
        try:
            out.append(int(s[i : i + 2], 16))
        except ValueError:
            break
    return bytes(out)


def content(f: dict[str, Any]) -> tuple[bytes, bool]:
    """(bytes, is utf8) of a file; an unknown encoding is utf8 (as Piston)."""
    enc = f.get("encoding")
    text: str = f["content"]
    if enc == "base64":
        return decode64(text.replace("-", "+").replace("_", "/")), False
    if enc == "hex":
        return _hex(text), False
    return text.encode(), True


def files_of(lang: Language, files: list[Any]) -> tuple[FileIn, list[FileIn]]:
    """(entry file saved as the language's source, the others by name).  The entry is
    the first utf8 file, as Piston runs code_files[0]."""
    entry: FileIn | None = None
    others: dict[str, FileIn] = {}
    for i, f in enumerate(files):
        data, utf8 = content(f)
        name = f.get("name") or f"file{i}.code"
        if not isinstance(name, str):
            name = str(name)
        if entry is None and utf8:
            entry = FileIn(lang.source, data)
            continue
        rel = name.lstrip("/")  # path.join(submission_dir, name): absolute names land inside
        try:
            path = check_box_path(rel, f"files[{i}].name")
        except SchemaError as e:
            if ".." in posixpath.normpath(rel).split("/"):
                raise PistonError(400, f'File path "{name}" tries to escape parent directory: {rel}') from None
            raise PistonError(400, str(e)) from None  # empty, NUL, too long: named by the schema
        if path == lang.source:
            raise PistonError(400, f"files[{i}].name: {name!r} is where the entry file is saved for {lang.id}")
        others[path] = FileIn(path, data)  # a later file of the same name wins, as it overwrites
    assert entry is not None
    return entry, list(others.values())


# --- stages ----------------------------------------------------------------


def _signame(n: int | None) -> str | None:
    if n is None:
        return None
    try:
        return signal.Signals(n).name
    except ValueError:
        return None


def stage(r: RunResult) -> dict[str, Any]:
    """A Piston stage object from one of our results."""
    code: int | None = r.exit_code
    sig = _signame(r.signal)
    status: str | None = None
    message: str | None = None
    if r.status == "ok":
        code = 0
    elif r.status == "nonzero_exit":
        status, message = "RE", f"Exited with error status {r.exit_code}"
    elif r.status == "signaled":
        status, message = "SG", f"Caught fatal signal {r.signal}"
    elif r.status == "bad_syscall":
        status, sig, message = "SG", "SIGSYS", f"Caught fatal signal {signal.SIGSYS.value}"
    elif r.status == "time_limit":
        status, sig, code = "TO", "SIGKILL", None
        message = "Time limit exceeded (wall clock)" if "wall" in r.message else "Time limit exceeded"
    elif r.status == "output_limit":
        if r.stdout_truncated or r.stderr_truncated:
            status = "OL" if r.stdout_truncated else "EL"
            message = "stdout length exceeded" if r.stdout_truncated else "stderr length exceeded"
            sig, code = "SIGKILL", None
        else:
            status, sig, code, message = "SG", "SIGXFSZ", None, f"Caught fatal signal {signal.SIGXFSZ.value}"
    elif r.status == "memory_limit":
        status = "SG" if r.signal is not None else "RE"
        message = "Memory limit exceeded"
    else:
        status, code, sig, message = "XX", None, None, r.message or "internal error"
    if status in ("SG", "TO", "OL", "EL"):
        code = None
    out = r.stdout.decode("utf-8", errors="replace")
    err = r.stderr.decode("utf-8", errors="replace")
    return {
        "signal": sig,
        "stdout": out,
        "stderr": err,
        "code": code,
        "output": out + err,
        "memory": r.memory,
        "message": message,
        "status": status,
        "cpu_time": round(r.cpu_time * 1000),
        "wall_time": round(r.wall_time * 1000),
    }


# --- the job: what a host runs ------------------------------------------------


class Job(msgspec.Struct, tag="piston", tag_field="api"):
    """A validated execute request: the job's spec."""

    lang: str
    language: str  # the runtime as the response names it
    version: str
    entry: FileIn
    others: list[FileIn]
    stdin: bytes
    args: list[str]
    run_limits: Limits
    compile_limits: Limits | None = None  # None: the language's own


async def run_job(
    engine: Engine, compiler: Compiler, job: Job, on_run: Callable[[Verdict, RunResult], None]
) -> SubmissionResult:
    comp = await compiler.compile(job.lang, job.entry.content, job.others, [], job.compile_limits)
    c = comp.result
    if not comp.ok:
        assert c is not None
        return SubmissionResult("IE" if c.status == "internal_error" else "CE", compile=c, message=c.message)
    r = await run_program(engine, comp, job.entry, job.others, job.stdin, job.run_limits, job.args)
    verdict = STATUS_VERDICT[r.status]
    on_run(verdict, r)
    return SubmissionResult(
        verdict, compile=c, tests=[test_result(0, verdict, r)], time=r.cpu_time, memory=r.memory, runs=[r]
    )


def response(job: Job, info: JobInfo) -> dict[str, Any]:
    """Piston's answer for a final job; PistonError if the job itself failed."""
    res = info.result
    if info.state != "done" or not isinstance(res, SubmissionResult):
        err = info.error
        message = err.message if err is not None else info.state
        code = err.code if err is not None else "internal"
        raise PistonError({"queue_full": 503, "draining": 503, "bad_request": 400}.get(code, 500), message)
    out: dict[str, Any] = {}
    if res.compile is not None:
        out["compile"] = stage(res.compile)
    # Piston: the run stage repeats the compile stage "for backward compatibility
    # when the run stage is not started".
    out["run"] = stage(res.runs[0]) if res.runs else out.get("compile", _internal(res.message))
    out.update(language=job.language, version=job.version)
    return out


def _internal(message: str) -> dict[str, Any]:
    return stage(RunResult("internal_error", message=message or "internal error"))


# --- HTTP ------------------------------------------------------------------

BACKEND: web.AppKey[Backend] = web.AppKey("piston_backend")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def handler(fn: Handler) -> Handler:
    async def wrapped(req: web.Request) -> web.StreamResponse:
        if req.method not in ("GET", "HEAD", "OPTIONS") and not req.headers.get("Content-Type", "").startswith(
            "application/json"
        ):
            return reply({"message": "requests must be of type application/json"}, 415)
        try:
            return await fn(req)
        except PistonError as e:
            return reply(e.body, e.status)
        except ServiceError as e:
            status = {"draining": 503, "queue_full": 503}.get(e.err.code, 400)
            return reply({"message": e.err.message}, status)

    return wrapped


async def _body(req: web.Request) -> dict[str, Any]:
    try:
        raw = await req.read()
    except web.HTTPRequestEntityTooLarge:
        # express's body parser error, answered by Piston's error handler with 400 and the stack.
        msg = "request entity too large"
        raise PistonError(400, msg, stack=f"PayloadTooLargeError: {msg}") from None
    try:
        data = await offload(len(raw), msgspec.json.decode, raw) if raw else {}
    except (msgspec.DecodeError, msgspec.ValidationError) as e:  # (ValidationError: a number out of range)
        raise PistonError(400, str(e), stack=f"SyntaxError: {e}") from None
    except RecursionError:
        msg = f"nested deeper than {sys.getrecursionlimit()} levels"
        raise PistonError(400, msg, stack=f"SyntaxError: {msg}") from None
    return data if isinstance(data, dict) else {}


@handler
async def execute(req: web.Request) -> web.Response:
    backend = req.app[BACKEND]
    body = await _body(req)
    language, version, files = body.get("language"), body.get("version"), body.get("files")
    if not language or not isinstance(language, str):
        raise PistonError(400, "language is required as a string")
    if not version or not isinstance(version, str):
        raise PistonError(400, "version is required as a string")
    if not isinstance(files, list):
        raise PistonError(400, "files is required as an array")
    for i, f in enumerate(files):
        if not isinstance(f, dict) or not isinstance(f.get("content"), str):
            raise PistonError(400, f"files[{i}].content is required as a string")
    rt = find_runtime(await backend.compat_languages(), language, version)
    if rt is None:
        raise PistonError(400, f"{language}-{version} runtime is unknown")
    if not any(not f.get("encoding") or f.get("encoding") == "utf8" for f in files):
        raise PistonError(400, "files must include at least one utf8 encoded file")
    comp_limits, run_limits = limits(rt.lang, body)
    args = body.get("args") or []
    if not isinstance(args, list):
        raise PistonError(400, "args must be an array")
    stdin = body.get("stdin")
    stdin = "" if stdin is None else stdin if isinstance(stdin, str) else str(stdin)
    if not stdin.endswith("\n"):
        stdin += "\n"  # Piston adds a trailing newline
    entry, others = await offload(sum(len(f["content"]) for f in files), files_of, rt.lang, files)
    job = Job(
        rt.lang.id,
        rt.language,
        rt.version,
        entry,
        others,
        stdin.encode(),
        [a if isinstance(a, str) else str(a) for a in args],
        run_limits,
        comp_limits,
    )
    job_id = str(uuid.uuid4())
    await backend.start_compat(job, job_id)
    # (A client that hangs up does not stop the run: aiohttp does not cancel
    # handlers, and the run is bounded by its own timeouts.)
    info = await backend.wait_job(job_id)
    # Answered once: nobody can ask for it again, so free the record (and, in
    # a fleet, the spec in Redis) now rather than at results_ttl.
    await backend.forget_job(job_id)
    return reply(response(job, info))


@handler
async def list_runtimes(req: web.Request) -> web.Response:
    out = []
    for rt in runtimes(await req.app[BACKEND].compat_languages()):
        d: dict[str, Any] = {"language": rt.language, "version": rt.version, "aliases": rt.aliases}
        if rt.runtime is not None:
            d["runtime"] = rt.runtime
        out.append(d)
    return reply(out)


async def not_found(req: web.Request) -> web.Response:
    return reply({"message": "Not Found"}, 404)


def make_app(backend: Backend, **app_args: Any) -> web.Application:
    """The Piston v2 API as a sub-application (mounted under `piston_prefix`), or an app of its own
    (at the root of `piston_http`; app_args: middlewares, client_max_size)."""
    app = web.Application(**app_args)
    app[BACKEND] = backend
    for path in ("/api/v2/execute", "/api/v2/execute/"):  # express routes ignore a trailing slash
        app.router.add_post(path, execute)
    for path in ("/api/v2/runtimes", "/api/v2/runtimes/"):
        app.router.add_get(path, list_runtimes)
    app.router.add_route("*", "/{tail:.*}", not_found)
    return app
