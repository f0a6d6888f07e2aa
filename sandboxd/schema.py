"""The job schema: runs, limits and results, defined once.

Every transport (CLI, Unix socket, HTTP) and the coordinator decode jobs with
these types, so a bad field gets the same precise error everywhere.  msgspec
gives one definition for JSON and msgpack, validation with the path of the
offending field, and is fast enough for the per-run path.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Literal

import msgspec
from msgspec import Meta, field

Status = Literal[
    "ok",
    "nonzero_exit",
    "signaled",
    "time_limit",
    "memory_limit",
    "output_limit",
    "bad_syscall",
    "internal_error",
]
STATUSES: tuple[str, ...] = Status.__args__  # type: ignore[attr-defined]

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB

# Hard ceilings of the schema itself; a deployment may lower them in config.
MAX_CPU_TIME = 600.0
MAX_WALL_TIME = 3600.0
MAX_MEMORY = 64 * GiB
MAX_PROCS = 4096
MAX_OUTPUT = 1 * GiB
MAX_FILE_SIZE = 4 * GiB
MAX_ARGV_BYTES = 256 * KiB  # argv + env, well under ARG_MAX
MAX_PATH = 1024  # bytes (UTF-8) of a path inside the box
MAX_NAME = 255  # bytes of one path component (the kernel's NAME_MAX)
# Files copied out of one run: their bytes sit in the result (memory) until it
# is read or expires, so they are bounded per run in count and in total, on top
# of each file's limits.file_size.
MAX_FILES_OUT = 64
MAX_FILES_OUT_BYTES = 64 * MiB
MAX_PRIORITY = 1000

Seconds = Annotated[float, Meta(gt=0)]
# A fleet host tag (e.g. reserved hosts for a contest): jobs may require one.
HostTag = Annotated[str, Meta(pattern=r"^[A-Za-z0-9._-]{1,64}$")]
Bytes = Annotated[int, Meta(gt=0)]
# A file of the content-addressed store (PUT /v1/files/{sha256}), named where
# bytes would go inline: lowercase hex, as sha256sum prints it.
Sha256 = Annotated[str, Meta(pattern=r"^[0-9a-f]{64}$")]


class SchemaError(ValueError):
    """A job that does not fit the schema; the message names the field."""


class Limits(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True, frozen=True):
    """Per-run limits.  Times in seconds, sizes in bytes."""

    cpu_time: Annotated[float, Meta(gt=0, le=MAX_CPU_TIME)] = 2.0
    # None: derived from cpu_time (2x + 1 s), so raising one limit is enough.
    wall_time: Annotated[float, Meta(gt=0, le=MAX_WALL_TIME)] | None = None
    memory: Annotated[int, Meta(ge=4 * MiB, le=MAX_MEMORY)] = 256 * MiB
    procs: Annotated[int, Meta(ge=1, le=MAX_PROCS)] = 64
    # Per stream (stdout, stderr): beyond it the run stops with output_limit.
    output: Annotated[int, Meta(ge=0, le=MAX_OUTPUT)] = 1 * MiB
    # Largest file the program may write (RLIMIT_FSIZE) and copy out.
    file_size: Annotated[int, Meta(ge=0, le=MAX_FILE_SIZE)] = 64 * MiB
    open_files: Annotated[int, Meta(ge=16, le=1 << 20)] = 256
    stack: Annotated[int, Meta(ge=64 * KiB, le=MAX_MEMORY)] | None = None  # None: = memory

    @property
    def wall(self) -> float:
        return self.wall_time if self.wall_time is not None else 2 * self.cpu_time + 1.0


class FileIn(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    path: str
    content: bytes = b""
    executable: bool = False
    sha256: Sha256 | None = None  # instead of content: a file of the store


# A run's stdin decodes as a memoryview: from a msgpack body, a view of the body
# itself, not a copy (a 40 MiB copy held the GIL, and so the event loop, for
# 60-110 ms: issue 13); from JSON, of the bytes its base64 decodes to.  Code
# may also put bytes there (a resolved stdin_sha256, the CLI's, the engine's).
if TYPE_CHECKING:
    Stdin = bytes | memoryview
else:
    Stdin = memoryview  # (msgspec: a union may hold one bytes-like type)


class RunRequest(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """One program run in one box."""

    cmd: Annotated[list[str], Meta(min_length=1)]
    env: dict[str, str] | None = None  # None: the language's/box's default
    stdin: Stdin = b""
    files_in: list[FileIn] = field(default_factory=list)
    files_out: Annotated[list[str], Meta(max_length=MAX_FILES_OUT)] = field(default_factory=list)
    limits: Limits = field(default_factory=Limits)
    cwd: str = "/box"
    priority: Annotated[int, Meta(ge=-MAX_PRIORITY, le=MAX_PRIORITY)] = 0
    # Seconds the run may wait in the queue before it is given up.
    queue_deadline: Annotated[float, Meta(gt=0, le=MAX_WALL_TIME)] | None = None
    # Fleet only: run on a host carrying this tag (a single daemon ignores it).
    host_tag: HostTag | None = None
    stdin_sha256: Sha256 | None = None  # instead of stdin: a file of the store


class FileOut(msgspec.Struct, omit_defaults=True):
    path: str
    content: bytes | None = None
    error: str | None = None  # why the file was not copied (refused, missing, too big)


# Tagged ("kind" field) so a job's result decodes to the right type on every transport.
class RunResult(msgspec.Struct, omit_defaults=False, tag_field="kind", tag="run"):
    status: Status
    exit_code: int | None = None
    signal: int | None = None
    cpu_time: float = 0.0
    wall_time: float = 0.0
    memory: int = 0
    stdout: bytes = b""
    stderr: bytes = b""
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    files: list[FileOut] = field(default_factory=list)
    message: str = ""  # human explanation for internal_error and refusals


def check_box_path(path: str, what: str) -> str:
    """A path relative to /box that cannot climb out of it; returns it normalized.
    Refused here, not by the kernel later: NUL, non-UTF-8 (lone surrogates), a
    component over NAME_MAX or a path over MAX_PATH bytes."""
    if not path or "\0" in path:
        raise SchemaError(f"{what}: path must be non-empty without NUL")
    try:
        size = len(path.encode())
    except UnicodeEncodeError:
        raise SchemaError(f"{what}: path is not valid UTF-8") from None
    if size > MAX_PATH:
        raise SchemaError(f"{what}: path of {size} bytes, more than {MAX_PATH}")
    if path.startswith("/"):
        raise SchemaError(f"{what}: {path!r} must be relative to /box")
    norm = posixpath.normpath(path)
    parts = norm.split("/")
    if norm in (".", "..") or ".." in parts:
        raise SchemaError(f"{what}: {path!r} must stay inside /box")
    long = next((p for p in parts if len(p.encode()) > MAX_NAME), None)
    if long is not None:
        raise SchemaError(f"{what}: a path component of {len(long.encode())} bytes, more than {MAX_NAME}")
    return norm


def _check_cwd(cwd: str) -> None:
    # Absolute in the box's own root (climbing is harmless there), but held to
    # the same sizes as any path, so the agent's chdir cannot fail on them.
    if not cwd.startswith("/") or "\0" in cwd:
        raise SchemaError("cwd: must be an absolute path inside the box")
    try:
        size = len(cwd.encode())
    except UnicodeEncodeError:
        raise SchemaError("cwd: path is not valid UTF-8") from None
    long = max((len(p.encode()) for p in cwd.split("/")), default=0)
    if size > MAX_PATH or long > MAX_NAME:
        raise SchemaError(f"cwd: at most {MAX_PATH} bytes, {MAX_NAME} per component")


def _check_files_out(paths: list[str]) -> list[str]:
    out: list[str] = []
    seen: set[str] = set()
    for i, p in enumerate(paths):
        norm = check_box_path(p, f"files_out[{i}]")
        if norm in seen:
            # Each copy would hold the file's bytes again (24 x 16 MiB from one 200-byte request).
            raise SchemaError(f"files_out[{i}]: {norm!r} given twice")
        seen.add(norm)
        out.append(norm)
    return out


def check_files_in(files: list[FileIn], what: str) -> None:
    """Each file's path normalised in place, and checked (in the box, no two alike)."""
    seen: set[str] = set()
    for i, f in enumerate(files):
        f.path = check_box_path(f.path, f"{what}[{i}].path")
        if f.path in seen:
            raise SchemaError(f"{what}[{i}].path: {f.path!r} given twice")
        seen.add(f.path)


def _utf8_len(s: str, what: str) -> int:
    try:
        return len(s.encode())
    except UnicodeEncodeError:
        raise SchemaError(f"{what}: not valid UTF-8") from None


def validate_run(req: RunRequest, resolved: bool = False) -> RunRequest:
    """Checks msgspec cannot express: paths, NULs, argv size.  resolved: the
    run about to go into a box, whose hashes must have been replaced by bytes."""
    size = 0
    for i, arg in enumerate(req.cmd):
        if "\0" in arg:
            raise SchemaError(f"cmd[{i}]: contains NUL")
        size += _utf8_len(arg, f"cmd[{i}]") + 1
    for k, v in (req.env or {}).items():
        if not k or "=" in k or "\0" in k or "\0" in v:
            raise SchemaError(f"env[{k!r}]: names must be non-empty without '=' or NUL")
        size += _utf8_len(k, f"env[{k!r}]") + _utf8_len(v, f"env[{k!r}]") + 2
    if size > MAX_ARGV_BYTES:
        raise SchemaError(f"cmd+env: {size} bytes, more than {MAX_ARGV_BYTES}")
    _check_cwd(req.cwd)
    check_files_in(req.files_in, "files_in")
    req.files_out = _check_files_out(req.files_out)
    refs = file_refs(req)  # (inline and by hash at once: refused)
    if resolved:
        check_resolved(req, refs)
    return req


def check_resolved(req: RunRequest, refs: list[tuple[str, str]] | None = None) -> None:
    """A run about to go into a box: every hash it named replaced by bytes."""
    refs = file_refs(req) if refs is None else refs
    if refs:
        raise SchemaError(f"{refs[0][0]}: a file of the store where only bytes can run (nothing resolved it)")


# --- Files named by hash (sandboxd.filestore) ---------------------------------


def _ref(out: list[tuple[str, str]], what: str, inline: bytes | memoryview | None, sha: str | None) -> None:
    if sha is None:
        return
    if inline:
        raise SchemaError(f"{what}_sha256: give the bytes inline or by hash, not both")
    out.append((f"{what}_sha256", sha))


def _file_refs(out: list[tuple[str, str]], what: str, files: list[FileIn]) -> None:
    for i, f in enumerate(files):
        if f.sha256 is not None and f.content:
            raise SchemaError(f"{what}[{i}].sha256: give content or sha256, not both")
        if f.sha256 is not None:
            out.append((f"{what}[{i}].sha256", f.sha256))


def file_refs(spec: RunRequest | Submission) -> list[tuple[str, str]]:
    """Every file of the store a run or submission names: (field, hash)."""
    out: list[tuple[str, str]] = []
    if isinstance(spec, RunRequest):
        _ref(out, "stdin", spec.stdin, spec.stdin_sha256)
        _file_refs(out, "files_in", spec.files_in)
        return out
    _ref(out, "source", spec.source, spec.source_sha256)
    _file_refs(out, "files", spec.files)
    for name, p in (("checker.program", spec.checker.program), ("interactor", spec.interactor)):
        if p is not None:
            _ref(out, f"{name}.source", p.source, p.source_sha256)
    for i, t in enumerate(spec.tests):
        _ref(out, f"tests[{i}].input", t.input, t.input_sha256)
        _ref(out, f"tests[{i}].expected", t.expected, t.expected_sha256)
    return out


def resolve_refs(spec: RunRequest | Submission, read: Callable[[str], bytes], tests: bool = True) -> None:
    """In place: each hash replaced by its bytes (`read`), for the code that runs it
    (tests=False: all but the tests', which the judge reads as each test starts)."""

    def files(fs: list[FileIn]) -> None:
        for f in fs:
            if f.sha256 is not None:
                f.content, f.sha256 = read(f.sha256), None

    if isinstance(spec, RunRequest):
        if spec.stdin_sha256 is not None:
            spec.stdin, spec.stdin_sha256 = read(spec.stdin_sha256), None
        files(spec.files_in)
        return
    files(spec.files)
    for p in (spec, spec.checker.program, spec.interactor):
        if p is not None and p.source_sha256 is not None:
            p.source, p.source_sha256 = read(p.source_sha256), None
    if tests:
        spec.tests = [resolve_test(t, read) for t in spec.tests]


def resolve_test(t: TestCase, read: Callable[[str], bytes]) -> TestCase:
    """One test with its bytes in place of its hashes (a copy; `t` unchanged if it names none)."""
    if t.input_sha256 is None and t.expected_sha256 is None:
        return t
    t = msgspec.structs.replace(t)
    if t.input_sha256 is not None:
        t.input, t.input_sha256 = read(t.input_sha256), None
    if t.expected_sha256 is not None:
        t.expected, t.expected_sha256 = read(t.expected_sha256), None
    return t


def decode_run(data: bytes, fmt: Literal["json", "msgpack"] = "json") -> RunRequest:
    try:
        if fmt == "json":
            req = msgspec.json.decode(data, type=RunRequest)
        else:
            req = msgspec.msgpack.decode(data, type=RunRequest)
    except msgspec.ValidationError as e:
        raise SchemaError(str(e)) from None
    except (msgspec.DecodeError, UnicodeDecodeError) as e:
        raise SchemaError(f"malformed {fmt}: {e}") from None
    return validate_run(req)


# --- Judged submissions -------------------------------------------------------

Verdict = Literal["AC", "WA", "TLE", "MLE", "OLE", "RE", "CE", "IE"]
VERDICTS: tuple[str, ...] = Verdict.__args__  # type: ignore[attr-defined]
CheckerKind = Literal["exact", "tokens", "lines", "float", "custom"]

MAX_TESTS = 1000


class LimitsPatch(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True, frozen=True):
    """Per-test overrides of the submission's limits (unset fields inherit)."""

    cpu_time: Annotated[float, Meta(gt=0, le=MAX_CPU_TIME)] | None = None
    wall_time: Annotated[float, Meta(gt=0, le=MAX_WALL_TIME)] | None = None
    memory: Annotated[int, Meta(ge=4 * MiB, le=MAX_MEMORY)] | None = None
    procs: Annotated[int, Meta(ge=1, le=MAX_PROCS)] | None = None
    output: Annotated[int, Meta(ge=0, le=MAX_OUTPUT)] | None = None
    file_size: Annotated[int, Meta(ge=0, le=MAX_FILE_SIZE)] | None = None

    def apply(self, base: Limits) -> Limits:
        given = {k: v for k, v in msgspec.structs.asdict(self).items() if v is not None}
        return msgspec.structs.replace(base, **given) if given else base


class Program(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """A helper program of a submission (custom checker, interactor)."""

    lang: str
    source: bytes = b""
    limits: Limits = field(default_factory=lambda: Limits(cpu_time=10.0))
    source_sha256: Sha256 | None = None  # instead of source: a file of the store


class Checker(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """How a test's output is compared with the expected answer.

    custom: a testlib-style program run in a box as `checker input output answer`
    (files in its /box); exit code 0 accepts, anything else is WA (its stdout
    and stderr become the test's checker message)."""

    kind: CheckerKind = "tokens"
    abs_tol: Annotated[float, Meta(ge=0)] = 1e-6  # float: |a-b| <= abs_tol or <= rel_tol*|b|
    rel_tol: Annotated[float, Meta(ge=0)] = 1e-6
    program: Program | None = None  # custom


class TestCase(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    input: bytes = b""
    expected: bytes | None = None  # None: any output passes if the run is ok (and the checker agrees)
    limits: LimitsPatch | None = None
    # Instead of input / expected: files of the store (uploaded once per problem).
    input_sha256: Sha256 | None = None
    expected_sha256: Sha256 | None = None


class Submission(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    lang: str
    source: bytes = b""
    # (Required, at least one; a default only so that `source` above may be left out.)
    tests: Annotated[list[TestCase], Meta(min_length=1, max_length=MAX_TESTS)] = field(default_factory=list)
    files: list[FileIn] = field(default_factory=list)  # extra sources/headers next to the main file
    compile_options: list[str] = field(default_factory=list)  # argv entries appended to the compile command
    limits: Limits = field(default_factory=Limits)
    compile_limits: Limits | None = None  # None: the language's
    checker: Checker = field(default_factory=Checker)
    interactor: Program | None = None  # interactive: stdin/stdout cross-connected with the solution
    priority: Annotated[int, Meta(ge=-MAX_PRIORITY, le=MAX_PRIORITY)] = 0
    stop_on_first_failure: bool = False
    # Seconds the submission may wait in the queue before it is given up.
    queue_deadline: Annotated[float, Meta(gt=0, le=MAX_WALL_TIME)] | None = None
    # Fleet only: judge on a host carrying this tag (a single daemon ignores it).
    host_tag: HostTag | None = None
    source_sha256: Sha256 | None = None  # instead of source: a file of the store


class TestResult(msgspec.Struct, omit_defaults=False):
    index: int
    verdict: Verdict
    time: float = 0.0  # CPU seconds
    wall_time: float = 0.0
    memory: int = 0
    exit_code: int | None = None
    signal: int | None = None
    stdout: bytes = b""  # cut to a preview
    stderr: bytes = b""
    message: str = ""  # checker's or interactor's comment, or why IE


class SubmissionResult(msgspec.Struct, omit_defaults=False, tag_field="kind", tag="submission"):
    verdict: Verdict
    compile: RunResult | None = None
    tests: list[TestResult] = field(default_factory=list)
    time: float = 0.0  # max CPU seconds over the tests
    memory: int = 0  # max peak bytes over the tests
    message: str = ""
    # A Judge0/Piston job's runs, each in full (those APIs return the whole
    # output; `tests` keep previews); empty for a judged submission.
    runs: list[RunResult] = field(default_factory=list)


def validate_submission(sub: Submission) -> Submission:
    if not sub.tests:
        raise SchemaError("tests: at least one test is required")
    for i, arg in enumerate(sub.compile_options):
        if "\0" in arg:
            raise SchemaError(f"compile_options[{i}]: contains NUL")
    check_files_in(sub.files, "files")
    if sub.checker.kind == "custom" and sub.checker.program is None:
        raise SchemaError("checker.program: required when checker.kind is 'custom'")
    if sub.checker.kind != "custom" and sub.checker.program is not None:
        raise SchemaError("checker.program: only for checker.kind 'custom'")
    file_refs(sub)
    return sub


# --- Wire messages (Unix socket and HTTP share them; see docs/protocol.md) ----

Op = Literal["run", "submit", "get", "wait", "cancel", "status", "languages", "ping", "files"]
ErrorCode = Literal[
    "bad_request",
    "not_found",
    "queue_full",
    "queue_deadline",
    "cancelled",
    "draining",
    "unauthorized",
    # a tenant's limits (a language it may not use, the admin API without the admin
    # token); a browser page of another origin (WebSocket sessions)
    "forbidden",
    "rate_limited",  # a tenant's rate, concurrency cap or daily CPU quota
    "conflict",  # an idempotency key sent again with a different request
    "too_large",  # a file upload over files.max_file
    "internal",
]


class Request(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    id: int | str
    op: Op
    body: msgspec.Raw = msgspec.Raw()  # decoded per op: RunRequest, Submission, JobRef; empty if absent
    wait: bool = True  # False: reply at once with the job id; poll with "get"
    progress: bool = False  # stream a "test" event per finished test of a submission
    # run/submit: the same key with the same request names the same job (wire.check_idempotency_key)
    idempotency_key: str | None = None
    # A tenant's API key (sandboxd.jobs.tenants); None: the unnamed tenant (the socket's own access control).
    api_key: str | None = None


class JobRef(msgspec.Struct, forbid_unknown_fields=True):
    job: str


class FilesRequest(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """The socket's `files` op: put (content, checked against sha256), head, get."""

    action: Literal["put", "head", "get"]
    sha256: Sha256
    content: bytes = b""


class Error(msgspec.Struct):
    code: ErrorCode
    message: str
    retry_after: float | None = None


class JobInfo(msgspec.Struct, omit_defaults=True):
    job: str
    kind: Literal["run", "submission"]
    # lost: accepted, and the daemon died with it unfinished more than once (not run again)
    state: Literal["queued", "running", "done", "cancelled", "failed", "lost"]
    result: RunResult | SubmissionResult | None = None
    error: Error | None = None
    host: str | None = None  # fleet: the host that ran the job
    created_at: float | None = None  # Unix time the job was accepted
    finished_at: float | None = None  # Unix time it became final
