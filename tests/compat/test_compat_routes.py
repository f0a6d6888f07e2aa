"""Unknown routes and methods a route does not take answer JSON, in the error shape
of the API the path is under, with 405's Allow kept: on a host daemon and through
a coordinator (aiohttp's own 404/405 bodies are text/plain)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

import pytest

from compat.util import Server


def raw(d: Server, method: str, path: str) -> tuple[int, str, str, Any]:
    """(status, Content-Type, Allow, JSON body) of a request without a body."""
    req = urllib.request.Request(d.http + path, method=method)
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            st, headers, body = r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        st, headers, body = e.code, e.headers, e.read()
    return st, headers.get("Content-Type", ""), headers.get("Allow", ""), json.loads(body)


@pytest.mark.parametrize("path", ["/nothing", "/v1/nothing", "/v1/jobs/x/y", "/judge0x"])
def test_unknown_native_route_is_json(server: Server, path: str) -> None:
    st, ctype, _, body = raw(server, "GET", path)
    assert (st, ctype.split(";")[0], body["error"]["code"]) == (404, "application/json", "not_found"), body
    assert path in body["error"]["message"] and "/openapi.json" in body["error"]["message"]


def test_native_method_not_allowed_is_json_with_allow(server: Server) -> None:
    st, ctype, allow, body = raw(server, "DELETE", "/v1/languages")
    assert (st, ctype.split(";")[0], body["error"]["code"]) == (405, "application/json", "bad_request"), body
    assert "GET" in allow.split(",")[0] or "GET" in allow, allow
    assert "DELETE /v1/languages" in body["error"]["message"]


def test_judge0_unknown_route_and_method_are_json(server: Server) -> None:
    st, ctype, _, body = raw(server, "GET", "/judge0/nothing")
    assert (st, ctype.split(";")[0]) == (404, "application/json") and set(body) == {"error"}, body
    assert "/judge0/nothing" in body["error"]
    st, ctype, allow, body = raw(server, "DELETE", "/judge0/languages")
    assert (st, ctype.split(";")[0]) == (405, "application/json") and set(body) == {"error"}, body
    assert "GET" in allow, allow


@pytest.mark.parametrize(("method", "path"), [("GET", "/piston"), ("GET", "/piston/x"), ("DELETE", "/piston/")])
def test_piston_unknown_route_is_its_not_found(server: Server, method: str, path: str) -> None:
    # (express has no 405: a method a route does not take falls through to the same 404)
    st, ctype, _, body = raw(server, method, path)
    assert (st, ctype.split(";")[0], body) == (404, "application/json", {"message": "Not Found"})
