"""The Judge0 and Piston operations in the OpenAPI document (sandboxd.api.openapi.register).

Their own request and reply formats, not the native schema: each operation
has a summary, its parameters and an example that works as sent against this
daemon (tests/api/test_openapi_examples.py); the fields are those of Judge0
CE 1.13 and Piston v2, documented by those projects (README "Judge0", "Piston").
"""

from __future__ import annotations

from typing import Any

from sandboxd.api.openapi import example_body

OK = {"200": {"description": "OK"}}


def _param(name: str, where: str, desc: str, example: Any, kind: str = "string") -> dict[str, Any]:
    return {"name": name, "in": where, "description": desc, "schema": {"type": kind}, "example": example}


_TOKEN = _param("token", "path", "the submission's token (POST /submissions answered it)", "<token>")
_B64 = _param("base64_encoded", "query", "true: source_code, stdin and outputs are base64", "false", "boolean")
_WAIT = _param("wait", "query", "true: answer when the submission is judged", "true", "boolean")
_SUBMISSION = {
    "source_code": "print(input()[::-1])",
    "language_id": 71,
    "stdin": "abc",
    "expected_output": "cba",
}


def _get(summary: str, *params: dict[str, Any]) -> dict[str, Any]:
    return {"get": {"summary": "Judge0: " + summary, "parameters": list(params), "responses": OK}}


JUDGE0: dict[str, Any] = {
    "/submissions": {
        "post": {
            "summary": "Judge0: create a submission",
            "parameters": [_B64, _WAIT],
            "requestBody": example_body("", _SUBMISSION),
            "responses": {"201": {"description": "created (its token; with wait=true the result)"}},
        },
        # (GET /submissions, the list, is not here: it always answers 403, as Judge0 without admin rights)
    },
    "/submissions/{token}": {
        **_get("a submission", _TOKEN, _B64),
        "delete": {"summary": "Judge0: delete a finished submission", "parameters": [_TOKEN], "responses": OK},
    },
    "/submissions/batch": {
        "post": {
            "summary": "Judge0: create several submissions",
            "parameters": [_B64],
            "requestBody": example_body("", {"submissions": [_SUBMISSION, {**_SUBMISSION, "stdin": "xy"}]}),
            "responses": {"201": {"description": "one token each"}},
        },
        **_get("several submissions", _param("tokens", "query", "comma-separated tokens", "<token>"), _B64),
    },
    "/languages": _get("languages served (Judge0 ids)"),
    "/languages/all": _get("every language, archived ones included"),
    "/languages/{id}": _get("one language", _param("id", "path", "Judge0 language id", 71, "integer")),
    "/statuses": _get("the status ids and descriptions"),
    "/statistics": _get("submission counts"),
    "/about": _get("version and homepage"),
    "/version": _get("the Judge0 version answered"),
    "/isolate": _get("the sandbox's name"),
    "/license": _get("the licence text"),
    "/config_info": _get("the limits and defaults in force"),
    "/system_info": _get("the host"),
    "/workers": _get("queues and workers"),
    "/authenticate": {"post": {"summary": "Judge0: check X-Auth-Token", "responses": OK}},
    "/authorize": {"post": {"summary": "Judge0: check X-Auth-User", "responses": OK}},
}

PISTON: dict[str, Any] = {
    "/api/v2/execute": {
        "post": {
            "summary": "Piston: run a program (compiled first when its language compiles)",
            "requestBody": example_body(
                "",
                {
                    "language": "python3",
                    "version": "*",
                    "files": [{"name": "main.py", "content": "print(input()[::-1])"}],
                    "stdin": "abc",
                },
            ),
            "responses": OK,
        }
    },
    "/api/v2/runtimes": {"get": {"summary": "Piston: runtimes (languages, versions, aliases)", "responses": OK}},
    "/api/v2/connect": {
        "get": {
            "summary": "Piston: a live run over a WebSocket (init, then data/signal; runtime, stage, data, exit back)",
            "x-websocket": [
                {"type": "init", "language": "python3", "version": "*", "files": [{"content": "print('hi')"}]}
            ],
            "responses": {"101": {"description": "switching protocols"}},
        }
    },
}
