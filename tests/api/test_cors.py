"""CORS as a browser meets it: real HTTP requests against a real daemon with a
token, one allowed origin for the native API, Judge0's default (any origin)
on its prefix and on a listener of its own."""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from daemon_util import Daemon, free_port
from instances import inst

TOKEN = "cors-test-token"
ORIGIN = "https://ide.example.org"


@pytest.fixture(scope="module")
def daemon() -> Iterator[Daemon]:
    env = {
        "SANDBOXD_HTTP_TOKEN": TOKEN,
        "SANDBOXD_HTTP_CORS_ORIGINS": f'["{ORIGIN}"]',
        "SANDBOXD_JUDGE0_HTTP": f"127.0.0.1:{free_port()}",
    }
    d = Daemon(inst("-cors"), pool_size=1, env=env)
    d.judge0 = f"http://{env['SANDBOXD_JUDGE0_HTTP']}"  # type: ignore[attr-defined]
    yield d
    assert d.stop() == 0, d.output()


def call(url: str, method: str = "GET", **headers: str) -> tuple[int, dict[str, str]]:
    req = urllib.request.Request(url, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            r.read()
            return r.status, dict(r.headers)
    except urllib.error.HTTPError as e:
        e.read()
        return e.code, dict(e.headers)


def preflight(url: str, origin: str, **headers: str) -> tuple[int, dict[str, str]]:
    return call(
        url,
        "OPTIONS",
        Origin=origin,
        **{"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization,content-type"},
        **headers,
    )


@pytest.mark.parametrize("auth", [{}, {"Authorization": f"Bearer {TOKEN}"}, {"Authorization": "Bearer wrong"}])
def test_preflight_is_answered_before_auth(daemon: Daemon, auth: dict[str, str]) -> None:
    # (before: 405 without a token, 401 with one: the browser never sent the POST)
    st, h = preflight(f"{daemon.http}/v1/runs", ORIGIN, **auth)
    assert st == 204, h
    assert h["Access-Control-Allow-Origin"] == ORIGIN
    assert "POST" in h["Access-Control-Allow-Methods"]
    allowed = {x.strip().lower() for x in h["Access-Control-Allow-Headers"].split(",")}
    assert {"authorization", "content-type", "idempotency-key"} <= allowed
    assert "Origin" in h["Vary"]


def test_disallowed_origin_gets_no_allow_headers(daemon: Daemon) -> None:
    st, h = preflight(f"{daemon.http}/v1/runs", "https://evil.example.com")
    assert st == 204 and not any(k.lower().startswith("access-control-allow") for k in h), h
    st, h = call(f"{daemon.http}/v1/languages", Origin="https://evil.example.com", Authorization=f"Bearer {TOKEN}")
    assert st == 200 and "Access-Control-Allow-Origin" not in h, h
    assert "Origin" in h["Vary"]  # a cache must not hand this reply to the allowed origin


def test_actual_request_carries_the_headers(daemon: Daemon) -> None:
    st, h = call(f"{daemon.http}/v1/languages", Origin=ORIGIN, Authorization=f"Bearer {TOKEN}")
    assert st == 200 and h["Access-Control-Allow-Origin"] == ORIGIN
    exposed = {x.strip() for x in h["Access-Control-Expose-Headers"].split(",")}
    assert {"Retry-After", "RateLimit-Remaining", "Location"} <= exposed
    # An error is readable by the page too (it can tell a bad token from a network failure).
    st, h = call(f"{daemon.http}/v1/languages", Origin=ORIGIN)
    assert st == 401 and h["Access-Control-Allow-Origin"] == ORIGIN
    st, h = call(f"{daemon.http}/v1/no-such-route", Origin=ORIGIN, Authorization=f"Bearer {TOKEN}")
    assert st == 404 and h["Access-Control-Allow-Origin"] == ORIGIN


def test_no_origin_no_cors_headers(daemon: Daemon) -> None:
    st, h = call(f"{daemon.http}/v1/languages", Authorization=f"Bearer {TOKEN}")
    assert st == 200 and "Access-Control-Allow-Origin" not in h


@pytest.mark.parametrize("where", ["prefix", "listener"])
def test_judge0_allows_any_origin_and_its_auth_headers(daemon: Daemon, where: str) -> None:
    base = f"{daemon.http}/judge0" if where == "prefix" else daemon.judge0  # type: ignore[attr-defined]
    st, h = preflight(f"{base}/submissions", "https://anywhere.example.net")
    assert st == 204 and h["Access-Control-Allow-Origin"] == "*", h
    allowed = {x.strip().lower() for x in h["Access-Control-Allow-Headers"].split(",")}
    assert {"x-auth-token", "x-auth-user", "authorization", "content-type"} <= allowed
    st, h = call(f"{base}/languages", Origin="https://anywhere.example.net", **{"X-Auth-Token": TOKEN})
    assert st == 200 and h["Access-Control-Allow-Origin"] == "*"
    st, h = call(f"{base}/languages", Origin="https://anywhere.example.net", **{"X-Auth-Token": "wrong"})
    assert st == 401 and h["Access-Control-Allow-Origin"] == "*"


def test_native_api_does_not_take_judge0_headers(daemon: Daemon) -> None:
    # X-Auth-Token is Judge0's: the native routes keep to the bearer token.
    st, _ = call(f"{daemon.http}/v1/languages", **{"X-Auth-Token": TOKEN})
    assert st == 401
