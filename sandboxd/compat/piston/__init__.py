"""Piston v2's HTTP API (`POST /api/v2/execute`, `GET /api/v2/runtimes`, `/packages`, `/`) on the native engine.

One execute request is one compat job of the backend (see sandboxd.compat:
the daemon's own, or a fleet job through a coordinator): the cached compile,
then one run, answered synchronously.  Request validation and
its messages, the 415 for a body that is not JSON, defaults, the stage objects
(`signal, stdout, stderr, code, output, memory, message, status, cpu_time,
wall_time`), `run` repeating `compile` when the compile failed, and the
trailing newline Piston adds to stdin follow Piston's api/src/api/v2.js and
job.js.  One concern per module:

    semver        version selectors (node-semver's satisfies)
    runtime       the runtimes listed, and finding one by name and selector
    constraints   timeouts, CPU times and memory limits as ours (defaults, bounds)
    files         file encodings and where each file lands
    request       the validated request (the job's spec)
    view          stage objects (the status mapping table is there) and the answer
    run           running a request (the only module that drives the engine)
    http          the aiohttp routes

Output is capped at the language's output limit (1 MiB per stream by
default, where Piston's default is 1 KB).  Known differences (also in
README): `output` is stdout followed by stderr (not interleaved); a compiled
language compiles its entry file (other files are present, e.g. headers, but
not compiled); Java's entry file is named after its public class
(sandboxd.engine.javaclass), as javac requires; version "0.0.0" stands for a version not detected (self-test off).

The names other modules use are re-exported here (`from sandboxd.compat.piston
import Job, make_app, run_job`).
"""

from __future__ import annotations

from sandboxd.compat.piston.constraints import RUN_CPU_MS, RUN_WALL_MS, MiB, configured, limits
from sandboxd.compat.piston.errors import PistonError
from sandboxd.compat.piston.files import content, files_of
from sandboxd.compat.piston.http import BACKEND, handler, make_app, reply, route_error
from sandboxd.compat.piston.request import Job
from sandboxd.compat.piston.run import run_job
from sandboxd.compat.piston.runtime import RUNTIMES, Runtime, find_runtime, runtimes
from sandboxd.compat.piston.semver import satisfies
from sandboxd.compat.piston.view import response, stage

__all__ = [
    "BACKEND",
    "RUNTIMES",
    "RUN_CPU_MS",
    "RUN_WALL_MS",
    "Job",
    "MiB",
    "PistonError",
    "Runtime",
    "configured",
    "content",
    "files_of",
    "find_runtime",
    "handler",
    "limits",
    "make_app",
    "reply",
    "response",
    "route_error",
    "run_job",
    "runtimes",
    "satisfies",
    "stage",
]
