"""The OpenAPI document, generated from the schema types so it cannot drift from them."""

from __future__ import annotations

from functools import cache
from typing import Any

import msgspec

from sandboxd.schema import Error, JobInfo, RunRequest, RunResult, Submission, SubmissionResult


def _body(ref: str) -> dict[str, Any]:
    schema = {"$ref": f"#/components/schemas/{ref}"}
    return {"content": {"application/json": {"schema": schema}, "application/msgpack": {"schema": schema}}}


def _resp(ref: str, desc: str = "OK") -> dict[str, Any]:
    return {"description": desc, **_body(ref)}


def _get(summary: str, public: bool = False) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "responses": {"200": {"description": "OK"}}}
    if public:
        op["security"] = []
    return {"get": op}


_ERRORS = {
    str(code): _resp("ErrorReply", desc)
    for code, desc in (
        (400, "invalid input: the message names the field"),
        (401, "missing or wrong bearer token"),
        (413, "body too large"),
        (422, "conflict: the Idempotency-Key was used for a different request"),
        (429, "queue full; see Retry-After"),
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


_SHA = {"name": "sha256", "in": "path", "required": True, "schema": {"type": "string", "pattern": "^[0-9a-f]{64}$"}}
_BYTES = {"content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}
# The content-addressed store (sandboxd/api/files.py): named by hash in runs and submissions.
_FILES = {
    "put": {
        "summary": "Upload a file once (its SHA-256 is checked); then name it by hash (`*_sha256`, `sha256`)",
        "parameters": [_SHA],
        "requestBody": {"required": True, **_BYTES},
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


@cache
def document() -> dict[str, Any]:
    class ErrorReply(msgspec.Struct):
        error: Error

    (_, _, _, _, _, _, _), components = msgspec.json.schema_components(
        (RunRequest, RunResult, Submission, SubmissionResult, JobInfo, Error, ErrorReply),
        ref_template="#/components/schemas/{name}",
    )
    job = {"name": "job", "in": "path", "required": True, "schema": {"type": "string"}}
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
                    "requestBody": {"required": True, **_body("RunRequest")},
                    "responses": {"200": _resp("RunResult"), "202": _resp("JobInfo", "queued"), **_ERRORS},
                }
            },
            "/v1/submissions": {
                "post": {
                    "summary": "Judge a submission: compile, run tests in parallel, check",
                    "parameters": [_WAIT, _CALLBACK, _KEY, _TEXT],
                    "requestBody": {"required": True, **_body("Submission")},
                    "responses": {"200": _resp("SubmissionResult"), "202": _resp("JobInfo", "queued"), **_ERRORS},
                }
            },
            "/v1/jobs/{job}": {
                "get": {
                    "summary": "A job's state and result",
                    "parameters": [
                        job,
                        {"name": "wait", "in": "query", "schema": {"type": "number", "maximum": 300}},
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
            "/v1/languages": {"get": {"summary": "Languages served", "responses": {"200": {"description": "OK"}}}},
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
