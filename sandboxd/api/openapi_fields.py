"""A description for each field of each schema in the OpenAPI document.

Kept as data next to openapi.py rather than as Meta(description=...) on the
schema types, so the wire types stay terse; tests/unit/test_openapi.py fails
when a schema has a field without a description here, so the two cannot drift.
"""

from __future__ import annotations

_LIMITS = {
    "cpu_time": "CPU seconds the program may use (user + system, all its processes)",
    "wall_time": "real seconds before the program is killed (default: from cpu_time)",
    "memory": "bytes of memory (cgroup limit, all its processes)",
    "procs": "processes and threads at once",
    "output": "bytes of stdout plus stderr kept; the rest is cut (`*_truncated`)",
    "file_size": "bytes any one file written may reach",
    "open_files": "open file descriptors per process",
    "stack": "bytes of stack (default: = memory)",
}
_BYTES = " (bytes: base64 in JSON unless ?text=1 and valid UTF-8; binary in msgpack)"

FIELDS: dict[str, dict[str, str]] = {
    "Limits": _LIMITS,
    "LimitsPatch": {k: v + "; unset: the submission's" for k, v in _LIMITS.items() if k not in ("open_files", "stack")},
    "RunRequest": {
        "cmd": "argv of the program, run in the box (cmd[0] looked up in PATH)",
        "env": "environment; absent: the box's default",
        "stdin": "the program's standard input" + _BYTES,
        "files_in": "files written into the box before the run",
        "files_out": "paths under the box whose content comes back in `files`",
        "limits": "the run's limits",
        "cwd": "working directory in the box",
        "priority": "higher runs first when boxes are short (with aging)",
        "queue_deadline": "seconds the job may wait for a box; then it fails with queue_deadline",
        "host_tag": "fleet: only hosts carrying this tag may run it",
    },
    "FileIn": {
        "path": "where in the box (relative to /box, or absolute under it)",
        "content": "the file's bytes" + _BYTES,
        "executable": "mode 0755 instead of 0644",
    },
    "FileOut": {
        "path": "the path asked for in files_out",
        "content": "its bytes" + _BYTES + "; absent when `error` says why",
        "error": "why the file was not copied (missing, refused, too big)",
    },
    "RunResult": {
        "kind": 'always "run"',
        "status": "how the run ended: ok, nonzero_exit, signaled, time_limit, memory_limit, output_limit, "
        "bad_syscall or internal_error",
        "exit_code": "the exit status, when it exited",
        "signal": "the signal that killed it, when one did",
        "cpu_time": "CPU seconds used",
        "wall_time": "real seconds from start to end",
        "memory": "peak bytes of memory",
        "stdout": "standard output" + _BYTES,
        "stderr": "standard error" + _BYTES,
        "stdout_truncated": "stdout was cut at limits.output",
        "stderr_truncated": "stderr was cut at limits.output",
        "files": "the files asked for in files_out",
        "message": "a human explanation for internal errors and refusals",
    },
    "Submission": {
        "lang": "language id (GET /v1/languages)",
        "source": "the program's source" + _BYTES,
        "tests": "the tests, run in parallel on warm boxes",
        "files": "extra files next to the main source (headers, modules)",
        "compile_options": "argv entries appended to the compile command",
        "limits": "limits of each test's run",
        "compile_limits": "limits of the compile step (absent: the language's)",
        "checker": "how outputs are compared with `expected`",
        "interactor": "an interactive problem's interactor (its stdin/stdout cross-connected with the program's)",
        "priority": "higher runs first when boxes are short (with aging)",
        "stop_on_first_failure": "skip the remaining tests after the first failing one",
        "queue_deadline": "seconds the job may wait for a box; then it fails with queue_deadline",
        "host_tag": "fleet: only hosts carrying this tag may run it",
    },
    "TestCase": {
        "input": "the test's stdin" + _BYTES,
        "expected": "the expected output; absent: any output passes if the run is ok",
        "limits": "overrides of the submission's limits for this test",
    },
    "Checker": {
        "kind": "exact (bytes), tokens (whitespace-separated), lines, float (with tolerances), custom (a program)",
        "abs_tol": "float: |a-b| <= abs_tol passes",
        "rel_tol": "float: |a-b| <= rel_tol*|b| passes",
        "program": "custom: a testlib-style checker run as `checker input output answer`",
    },
    "Program": {
        "lang": "language id of the helper program",
        "source": "its source" + _BYTES,
        "limits": "its limits",
    },
    "SubmissionResult": {
        "kind": 'always "submission"',
        "verdict": "the overall verdict: AC, WA, TLE, MLE, OLE, RE, CE (compile error) or IE (internal error)",
        "compile": "the compile step's run, when the language compiles",
        "tests": "one result per test, in order",
        "time": "the largest CPU seconds over the tests",
        "memory": "the largest peak bytes over the tests",
        "message": "a human explanation (compile error summary, internal error)",
        "runs": "Judge0/Piston jobs only: each run in full",
    },
    "TestResult": {
        "index": "the test's position in `tests`",
        "verdict": "AC, WA, TLE, MLE, OLE, RE or IE",
        "time": "CPU seconds",
        "wall_time": "real seconds",
        "memory": "peak bytes",
        "exit_code": "the exit status, when it exited",
        "signal": "the signal that killed it, when one did",
        "stdout": "the first 4 KiB of stdout" + _BYTES,
        "stderr": "the first 4 KiB of stderr" + _BYTES,
        "message": "the checker's or interactor's comment, or why IE",
    },
    "JobInfo": {
        "job": "the job's id (GET /v1/jobs/{job})",
        "kind": "run or submission",
        "state": "queued, running, done, cancelled, failed, lost",
        "result": "the RunResult or SubmissionResult, once done",
        "error": "why it failed, when it did",
        "host": "fleet: the host that ran it",
        "created_at": "Unix time it was accepted",
        "finished_at": "Unix time it became final",
    },
    "Error": {
        "code": "the wire code (docs/protocol.md): bad_request, not_found, queue_full, unauthorized, ...",
        "message": "what was wrong, naming the field and the fix",
        "retry_after": "seconds to wait before retrying, when retrying can help",
    },
    "ErrorReply": {"error": "the error"},
}


def describe(components: dict[str, dict[str, object]]) -> None:
    """Put each field's description into the generated schemas (in place)."""
    for name, schema in components.items():
        props = schema.get("properties")
        if not isinstance(props, dict):
            continue
        for field, desc in FIELDS.get(name, {}).items():
            if isinstance(props.get(field), dict):
                props[field]["description"] = desc
