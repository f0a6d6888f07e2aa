"""The OpenAPI document, generated from the schema types so it cannot drift from them.

Each field's description comes from openapi_fields; each operation carries an
example that works as sent (tests/api/test_openapi_examples.py sends every
one to a real daemon).  The registered HTTP APIs (Judge0, Piston) add their
paths with `register`; `document(mounted)` lists them under the prefixes
they are mounted at on the listener asked.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Mapping
from functools import cache
from typing import Any

import msgspec

from sandboxd.api import sse
from sandboxd.api.openapi_fields import describe
from sandboxd.schema import Error, JobInfo, RunRequest, RunResult, Submission, SubmissionResult

# API name -> its path items, relative to where it is mounted (a plug-in's: sandboxd.compat).
_PATHS: dict[str, dict[str, Any]] = {}


def register(name: str, paths: Mapping[str, Any]) -> None:
    """A registered HTTP API's operations, listed under its prefix wherever it is mounted."""
    _PATHS[name] = dict(paths)


def b64(text: str) -> str:
    """An example's bytes field as JSON carries it."""
    return base64.b64encode(text.encode()).decode()


def example_body(ref: str, example: Any) -> dict[str, Any]:
    """A JSON request body of schema `ref` (or a plain schema) with its example."""
    schema = {"$ref": f"#/components/schemas/{ref}"} if ref else {"type": "object"}
    return {"required": True, "content": {"application/json": {"schema": schema, "example": example}}}


RUN_EXAMPLE = {"cmd": ["sh", "-c", "read name; echo hello $name"], "stdin": b64("world\n")}
# A WebSocket operation: OpenAPI has no words for one, so `x-websocket` lists the
# text messages a client sends, in order (the examples test sends them and reads
# to the end); the protocol is in docs/sessions.md.
SESSION_EXAMPLE = [
    {"type": "start", "language": "python3", "source": "print(input()[::-1])\n", "stdin": "abc\n"},
    {"type": "eof"},
]
SUBMISSION_EXAMPLE = {
    "lang": "python3",
    "source": b64("print(input()[::-1])\n"),
    "tests": [{"input": b64("abc\n"), "expected": b64("cba\n")}, {"input": b64("xy\n"), "expected": b64("yx\n")}],
}


def _body(ref: str, example: Any = None) -> dict[str, Any]:
    schema = {"$ref": f"#/components/schemas/{ref}"}
    json: dict[str, Any] = {"schema": schema} if example is None else {"schema": schema, "example": example}
    return {"content": {"application/json": json, "application/msgpack": {"schema": schema}}}


def _resp(ref: str, desc: str = "OK") -> dict[str, Any]:
    return {"description": desc, **_body(ref)}


# POST /v1/submissions with `Accept: text/event-stream` (sandboxd/api/sse.py): the
# progress as Server-Sent Events, each `data` one line of JSON.  OpenAPI 3.1 has no
# schema for a stream's items: the events are named, each with its data's schema,
# in `x-events` (and in the description, which /docs shows).
_SSE_EVENTS = {
    "accepted": {"type": "object", "properties": {"job": {"type": "string"}}, "required": ["job"]},
    "test": {"$ref": "#/components/schemas/TestResult"},
    "result": {"$ref": "#/components/schemas/SubmissionResult"},
    "error": {"$ref": "#/components/schemas/ErrorReply"},
}
_SSE_EXAMPLE = (
    'event: accepted\ndata: {"job":"j-0123456789abcdef"}\n\n'
    'event: test\ndata: {"index":0,"verdict":"AC",...}\n\n'
    'event: result\ndata: {"verdict":"AC","tests":[...],...}\n\n'
)
_SSE = {
    sse.MEDIA: {
        "schema": {
            "type": "string",
            "description": "With `Accept: text/event-stream`: Server-Sent Events, each `data` one line of JSON. "
            "`accepted` ({job}) once the job is queued, one `test` (a TestResult) per finished test (the oldest "
            "dropped first for a client that reads slower than tests finish: `result` carries every test), then "
            "`result` (the SubmissionResult) or `error` ({error: {code, message}}). A refusal before the job "
            "is accepted is a plain JSON error reply instead; past [http] max_event_streams, 503 + Retry-After.",
        },
        "example": _SSE_EXAMPLE,
        "x-events": _SSE_EVENTS,
    }
}


def _get(summary: str, public: bool = False) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "responses": {"200": {"description": "OK"}}}
    if public:
        op["security"] = []
    return {"get": op}


_PAGES = (
    ("/", "The playground page (HTML): run and judge programs, a live terminal"),
    ("/dashboard", "The dashboard page (HTML): pools, queues, throughput and latency, live"),
    ("/docs", "This document as a page (HTML)"),
)

_ERRORS = {
    str(code): _resp("ErrorReply", desc)
    for code, desc in (
        (400, "invalid input: the message names the field"),
        (401, "missing or wrong bearer token or API key"),
        (403, "forbidden: a language this tenant may not use (named)"),
        (413, "body too large"),
        (422, "conflict: the Idempotency-Key was used for a different request"),
        (
            429,
            "queue full, or the tenant's rate, concurrency or CPU quota (rate_limited); see Retry-After, RateLimit-*",
        ),
        (503, "draining; see Retry-After"),
    )
}
_KEY = {
    "name": "Idempotency-Key",
    "in": "header",
    "description": "1..255 printable ASCII characters: the same key and request name the same job for results_ttl",
    "schema": {"type": "string", "pattern": "^[!-~]{1,255}$"},
}
_CALLBACK = {
    "name": "callback_url",
    "in": "query",
    "schema": {"type": "string", "format": "uri"},
    "description": "POST the finished JobInfo (JSON) here; non-public addresses refused unless configured",
}
_WAIT = {
    "name": "wait",
    "in": "query",
    "schema": {"type": "boolean", "default": True},
    "description": "false: reply 202 with the job id at once; poll GET /v1/jobs/{job}",
}

_TEXT = {
    "name": "text",
    "in": "query",
    "schema": {"type": "boolean", "default": False},
    "description": "JSON replies only: each bytes field of the result (stdout, stderr, a file's content, a "
    "test's preview) is a UTF-8 string where its bytes are valid UTF-8, else base64; next to each, "
    '`<field>_encoding` is "utf-8" or "base64" (docs/protocol.md, "Text mode")',
}


_FILE_EXAMPLE = "3 4\n"  # (a test's input; its hash below is the path's example)
_SHA = {
    "name": "sha256",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
    "example": hashlib.sha256(_FILE_EXAMPLE.encode()).hexdigest(),
}
_BYTES = {"content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}
_UPLOAD = {
    "content": {
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}, "example": _FILE_EXAMPLE}
    }
}
_TENANT_EXAMPLE = {
    "name": "class-42",
    "languages": ["python3", "c"],
    "rate": 5,
    "burst": 20,
    "concurrency": 4,
    "weight": 1,
}
# The content-addressed store (sandboxd/api/files.py): named by hash in runs and submissions.
_FILES = {
    "put": {
        "summary": "Upload a file once (its SHA-256 is checked); then name it by hash (`*_sha256`, `sha256`)",
        "parameters": [_SHA],
        "requestBody": {"required": True, **_UPLOAD},
        "responses": {
            "201": {"description": "stored: {sha256, size, created: true}"},
            "200": {"description": "stored already: {sha256, size, created: false}"},
            "400": _resp("ErrorReply", "the body's SHA-256 is another"),
            "413": _resp("ErrorReply", "larger than files.max_file"),
        },
    },
    "head": {
        "summary": "Whether the file is stored",
        "parameters": [_SHA],
        "responses": {"200": {"description": "stored"}, "404": {"description": "not stored"}},
    },
    "get": {
        "summary": "The file's bytes",
        "parameters": [_SHA],
        "responses": {"200": {"description": "OK", **_BYTES}, "404": _resp("ErrorReply", "not stored")},
    },
}


def document(mounted: tuple[tuple[str, str], ...] = ()) -> dict[str, Any]:
    """The document for a listener with these (API name, prefix) mounted."""
    doc = _native()
    paths = dict(doc["paths"])
    for name, prefix in mounted:
        for path, item in _PATHS.get(name, {}).items():
            paths[prefix.rstrip("/") + path] = item
    return {**doc, "paths": paths}


@cache
def _native() -> dict[str, Any]:
    class ErrorReply(msgspec.Struct):
        error: Error

    (_, _, _, _, _, _, _), components = msgspec.json.schema_components(
        (RunRequest, RunResult, Submission, SubmissionResult, JobInfo, Error, ErrorReply),
        ref_template="#/components/schemas/{name}",
    )
    describe(components)
    job = {
        "name": "job",
        "in": "path",
        "required": True,
        "schema": {"type": "string"},
        "description": "the job id a POST answered (with ?wait=false: at once)",
        "example": "j-0123456789abcdef",
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "sandboxd",
            "version": "1",
            "description": "Run untrusted code in warm sandboxes. Bytes fields are base64 strings in JSON "
            "(with ?text=1, results carry UTF-8 strings where valid), binary in msgpack. The Unix socket "
            "offers the same operations (docs/protocol.md).",
        },
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
        "paths": {
            "/v1/runs": {
                "post": {
                    "summary": "Run one program",
                    "parameters": [_WAIT, _CALLBACK, _KEY, _TEXT],
                    "requestBody": {"required": True, **_body("RunRequest", RUN_EXAMPLE)},
                    "responses": {"200": _resp("RunResult"), "202": _resp("JobInfo", "queued"), **_ERRORS},
                }
            },
            "/v1/submissions": {
                "post": {
                    "summary": "Judge a submission: compile, run tests in parallel, check",
                    "parameters": [_WAIT, _CALLBACK, _KEY, _TEXT],
                    "requestBody": {"required": True, **_body("Submission", SUBMISSION_EXAMPLE)},
                    "responses": {
                        "200": {
                            "description": "the result (waited); with Accept: text/event-stream, its progress",
                            "content": {**_body("SubmissionResult")["content"], **_SSE},
                        },
                        "202": _resp("JobInfo", "queued"),
                        **_ERRORS,
                    },
                }
            },
            "/v1/jobs/{job}": {
                "get": {
                    "summary": "A job's state and result",
                    "parameters": [
                        job,
                        {
                            "name": "wait",
                            "in": "query",
                            "schema": {"type": "number", "maximum": 300},
                            "description": "seconds to wait for the job to finish before answering",
                            "example": 10,
                        },
                        _TEXT,
                    ],
                    "responses": {"200": _resp("JobInfo"), "404": _resp("ErrorReply", "unknown or expired")},
                },
                "delete": {
                    "summary": "Cancel a queued or running job",
                    "parameters": [job],
                    "responses": {"200": _resp("JobInfo"), "404": _resp("ErrorReply", "unknown or expired")},
                },
            },
            "/v1/files/{sha256}": _FILES,
            "/v1/status": {
                "get": {"summary": "Pools, queues and recent run times", "responses": {"200": {"description": "OK"}}}
            },
            "/v1/sessions": {
                "get": {
                    "summary": "A live session (WebSocket): run a program with stdin and output streamed",
                    "description": "Upgrade to a WebSocket, send a `start` message, then stdin as binary frames "
                    "and `eof`/`signal`/`kill`; output comes back as binary frames (first byte: 1 stdout, 2 stderr) "
                    "and a final `result` (docs/sessions.md). Browsers send the token in `start`.",
                    "x-websocket": SESSION_EXAMPLE,
                    "responses": {"101": {"description": "switching protocols"}, **_ERRORS},
                }
            },
            "/v1/dashboard": {
                "get": {
                    "summary": "The status plus run times per second of the last 10 minutes (the dashboard's data)",
                    "description": "`series`: [unix second, runs finished, p50 wall s, p99 wall s] per second with "
                    "runs; through a coordinator also `hosts` (each with its load) and `fleet_queues`",
                    "responses": {"200": {"description": "OK"}},
                }
            },
            **{path: _get(summary, public=True) for path, summary in _PAGES},
            "/v1/languages": {"get": {"summary": "Languages served", "responses": {"200": {"description": "OK"}}}},
            "/v1/tenants": {
                "get": {"summary": "Tenants (admin: the bearer token)", "responses": {"200": {"description": "OK"}}},
                "post": {
                    "summary": "Create a tenant (admin); the reply carries its key, shown once",
                    "requestBody": {
                        "required": True,
                        "description": "name; languages (empty: all); rate (jobs/s, 0: unlimited) and burst; "
                        "concurrency (jobs in flight, 0: unlimited); cpu_seconds_per_day (0: unlimited); "
                        "max_priority (higher asks are clamped); weight (its share of boxes when oversubscribed)",
                        "content": {"application/json": {"example": _TENANT_EXAMPLE}},
                    },
                    "responses": {"201": {"description": "{tenant, key}"}, **_ERRORS},
                },
            },
            "/v1/tenants/{name}": {
                "delete": {
                    "summary": "Delete a tenant (admin)",
                    "parameters": [
                        {
                            "name": "name",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string"},
                            "example": _TENANT_EXAMPLE["name"],
                        }
                    ],
                    "responses": {"200": {"description": "OK"}, "404": _resp("ErrorReply", "no such tenant")},
                }
            },
            "/metrics": {
                "get": {"summary": "Prometheus metrics", "security": [], "responses": {"200": {"description": "OK"}}}
            },
            "/healthz": {"get": {"summary": "Liveness", "security": [], "responses": {"200": {"description": "OK"}}}},
            "/readyz": {
                "get": {
                    "summary": "Readiness (warm boxes, not draining, not healing)",
                    "security": [],
                    "responses": {
                        "200": {"description": "OK"},
                        "503": {"description": "not ready: {ready: false, reason}"},
                    },
                }
            },
        },
    }
