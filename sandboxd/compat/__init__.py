"""Drop-in Judge0 CE and Piston v2 HTTP APIs, as thin translations onto the native engine.

Each compat request becomes one native job of a `Backend`: on a host daemon
the Service (kind "submission": it shows in /v1/jobs, /v1/status, the metrics,
is drained on SIGTERM and expires after `results_ttl`), on a coordinator a
fleet job in Redis that the host claiming it runs the same way.  The job's
spec is the API's validated request (`judge0.Request`, `piston.Job`,
sandboxd.compat.kinds); its work is the judge's own two steps, the cached
`Engine.compile` and `Engine.run_compiled`, on the language's pool and
admission queues; its result is a SubmissionResult whose `runs` hold each
run's full result, from which each API renders its own answer.  No second
queue, no second execution path, and nothing an API needs lives only in one
process's memory (a Judge0 token can be read through any coordinator).

Why not `Service.submit(Submission)`: a native test result keeps a 4 KiB
preview of stdout, has no program arguments, no stderr-into-stdout, no extra
files at run time for compiled languages, and its checkers are not Judge0's
comparison rule; both APIs promise the full output.  Why not
`Service.submit_run(RunRequest)`: a bare run has no language, so it would run
on the host pool outside the language's rootfs and per-language queue.

Shared here: one run with Judge0/Piston-only options and a callback PUT
through the callbacks module's SSRF checks and address pinning; the Backend
both frontends implement is sandboxd.jobs.backend's, the single-flight compile
(a Judge0 batch of twenty test cases compiles once, not twenty times in
parallel) sandboxd.engine.compiler's.  Each API is a job kind of its own
(sandboxd.compat.kinds), registered with the core by the app layer, which
also mounts the APIs' HTTP apps (`register`).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING, Protocol

import msgspec

from sandboxd.jobs import callbacks
from sandboxd.jobs.backend import Backend, Load, Served

if TYPE_CHECKING:
    from sandboxd.engine.engine import Compiled, Engine
    from sandboxd.languages import Language
    from sandboxd.schema import FileIn, Limits, RunResult

# Backend, Load and Served live in the jobs layer (the frontends implement them); named here
# too for the API modules.  Engine types are annotations only: the coordinator, which serves
# both APIs and runs no box, imports this package without loading the engine.
__all__ = ["REDIRECT", "Backend", "Compiler", "Load", "Served", "put_json", "run_program"]

log = logging.getLogger(__name__)


class Compiler(Protocol):
    """What the run modules compile through: sandboxd.engine.compiler.Compiler
    (Engine.compile with single flight; a host daemon's Service holds one)."""

    async def compile(
        self,
        lang: str,
        source: bytes,
        files: list[FileIn],
        options: list[str],
        limits: Limits | None = None,
    ) -> Compiled: ...


REDIRECT = ["sh", "-c", 'exec "$@" 2>&1', "sh"]


async def run_program(
    engine: Engine,
    comp: Compiled,
    source: FileIn,
    extras: list[FileIn],
    stdin: bytes,
    limits: Limits,
    args: list[str],
    redirect_stderr: bool = False,
) -> RunResult:
    """One run of a compiled (or interpreted) program, as the judge runs a test.

    `extras` (additional files) are in /box for the run as for the compile;
    a compiled language's source stays next to its artifacts, as in Judge0's
    and Piston's boxes.  redirect_stderr: stderr into stdout, in write order,
    through `sh -c 'exec "$@" 2>&1'` (the program itself replaces the shell);
    on a rootfs without a shell the streams are joined after the run instead."""
    lang = comp.lang
    files: list[FileIn] = []
    if lang.compile:
        have = {f.path for f in comp.files}
        files = [f for f in (source, *extras) if f.path not in have]
    if redirect_stderr:
        wrapped = dataclasses.replace(comp, lang=msgspec.structs.replace(lang, run=REDIRECT + list(lang.run)))
        r = await engine.run_compiled(wrapped, stdin, limits, files_in=files, args=args)
        if not (r.exit_code == 127 and r.message.startswith("cannot execute 'sh'")):
            _memory_error(lang, r, r.stdout)
            return r
    r = await engine.run_compiled(comp, stdin, limits, files_in=files, args=args)
    if redirect_stderr:
        r.stdout, r.stderr = r.stdout + r.stderr, b""
    return r


def _memory_error(lang: Language, r: RunResult, output: bytes) -> None:
    # run_compiled looks for the runtime's own out-of-memory error in stderr; merged, it is in stdout.
    if r.status in ("nonzero_exit", "signaled") and lang.memory_errors and lang.memory_error(output):
        r.status, r.message = "memory_limit", f"{lang.name} ran out of memory"


async def put_json(url: str, body: bytes, allow_private: bool, attempts: int = 3, timeout: float = 5.0) -> bool:
    """Judge0's callback: PUT the JSON body, stopping at any HTTP answer as Judge0
    does; target checks and address pinning are the callbacks module's."""
    return await callbacks.deliver(url, body, allow_private, attempts, timeout, method="PUT", retry_on_http_error=False)
