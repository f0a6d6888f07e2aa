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
jobs/isolate_job.rb, serializers).  One concern per module:

    tables       status ids and names, language ids, config_info, the model's bounds
    casts        Ruby/Rails casts of parameters, decimals, timestamps, bash words
    request      the validated submission (the job's spec) and its limits
    validate     the model's validations, message for message (the 422 body)
    catalog      the languages Judge0 lists, and their names
    status       how a run ended -> Judge0's status (the mapping table is there)
    serializer   the submission's attributes, as GET shows them
    callback     the PUT to callback_url
    statistics   GET /statistics: what this process counted (no submissions table)
    sessions     POST /authenticate and /authorize on the daemon's one token
    run          running a submission (the only module that drives the engine)
    api          the operations on a Backend; http, submissions, info, routes: aiohttp

Deliberate differences (also in README): `enable_network` and the
per-process limits are refused (`allow_*` false: our limits are cgroup-wide
and boxes have no network), a private `callback_url` is refused (SSRF; the
check of the callbacks module), `additional_files` must be a safe zip
(no absolute or `..` paths, no symlinks, at most `max_extract_size` KB,
1000 entries), a `memory_limit` below 4 MiB runs with 4 MiB, language 89
(multi-file program) is not served, and auth is the daemon's bearer token
(also taken in Judge0's X-Auth-Token / X-Auth-User headers).

The names other modules use are re-exported here (`from sandboxd.compat.judge0
import Request, make_app, run_job, deliver_callback`).
"""

from __future__ import annotations

from sandboxd.compat.archive import decode64, encode64
from sandboxd.compat.judge0.api import Judge0
from sandboxd.compat.judge0.callback import deliver_callback
from sandboxd.compat.judge0.casts import decimal, timestamp
from sandboxd.compat.judge0.http import J0, J0Error, handler, reply, route_error
from sandboxd.compat.judge0.info import system_facts
from sandboxd.compat.judge0.request import Request
from sandboxd.compat.judge0.routes import make_app
from sandboxd.compat.judge0.run import run_job
from sandboxd.compat.judge0.serializer import view
from sandboxd.compat.judge0.status import Outcome, judge_run, outcome
from sandboxd.compat.judge0.tables import (
    ATTRIBUTES,
    CONFIG,
    DEFAULT_FIELDS,
    J0_VERDICT,
    LANGUAGES,
    MIN_MEMORY,
    NOT_UTF8,
    NOT_UTF8_BATCH,
    NUMERIC,
    PERMITTED,
    SIGNAL_STATUS,
    STATUSES,
    TEXT_FIELDS,
    TOKEN_HEADERS,
    UNSAFE_SHELL,
    VERSION,
    KiB,
)

__all__ = [
    "ATTRIBUTES",
    "CONFIG",
    "DEFAULT_FIELDS",
    "J0",
    "J0_VERDICT",
    "LANGUAGES",
    "MIN_MEMORY",
    "NOT_UTF8",
    "NOT_UTF8_BATCH",
    "NUMERIC",
    "PERMITTED",
    "SIGNAL_STATUS",
    "STATUSES",
    "TEXT_FIELDS",
    "TOKEN_HEADERS",
    "UNSAFE_SHELL",
    "VERSION",
    "J0Error",
    "Judge0",
    "KiB",
    "Outcome",
    "Request",
    "decimal",
    "decode64",
    "deliver_callback",
    "encode64",
    "handler",
    "judge_run",
    "make_app",
    "outcome",
    "reply",
    "route_error",
    "run_job",
    "system_facts",
    "timestamp",
    "view",
]
