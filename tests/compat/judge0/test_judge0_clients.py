"""Judge0 details real clients trip on: trailing slashes, /authenticate and
/authorize, X-Auth-Token, times in milliseconds, /statistics.  Against a host
daemon and through a fleet (the `server` fixture), and a daemon with a token."""

from __future__ import annotations

import re
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from daemon_util import Daemon
from instances import inst

from compat.util import Server, http, submit

TOKEN = "judge0-auth-token"


@pytest.mark.parametrize(
    "path",
    ["/languages/", "/languages/71/", "/languages/all/", "/statuses/", "/about/", "/config_info/", "/statistics/"],
)
def test_a_trailing_slash_answers_as_without(server: Server, path: str) -> None:
    # (before: 404 for each)
    st, with_slash = http(server, "GET", "/judge0" + path)
    st2, without = http(server, "GET", "/judge0" + path.rstrip("/"))
    assert st == st2 == 200
    if path != "/statistics/":  # (its `now` moves)
        assert with_slash == without


def test_trailing_slash_on_submissions_and_batch(server: Server) -> None:
    st, body = http(server, "POST", "/judge0/submissions/?wait=true", {"source_code": "print(5)", "language_id": 71})
    assert st == 201 and body["stdout"] == "5\n", body
    token = body["token"]
    st, got = http(server, "GET", f"/judge0/submissions/{token}/?fields=stdout,status_id")
    assert (st, got) == (200, {"stdout": "5\n", "status_id": 3})
    st, batch = http(
        server, "POST", "/judge0/submissions/batch/", {"submissions": [{"source_code": "print(6)", "language_id": 71}]}
    )
    assert st == 201 and "token" in batch[0]
    st, shown = http(server, "GET", f"/judge0/submissions/batch/?tokens={token}&fields=token")
    assert (st, shown) == (200, {"submissions": [{"token": token}]})
    st, _ = http(server, "DELETE", f"/judge0/submissions/{token}/")
    assert st == 200


def test_authenticate_and_authorize_with_auth_off(server: Server) -> None:
    # (before: 404) Judge0 answers with an empty body.
    assert http(server, "POST", "/judge0/authenticate") == (200, None)
    assert http(server, "POST", "/judge0/authorize/") == (200, None)


def test_time_and_wall_time_have_three_decimals_at_most(server: Server) -> None:
    r = submit(server, source_code="s = 0\nfor i in range(200000): s += i\nprint(s)", language_id=71)
    for key in ("time", "wall_time"):
        assert re.fullmatch(r"\d+\.\d{1,3}", r[key]), r[key]
    assert float(r["wall_time"]) > 0


def _stats(server: Server) -> dict[str, Any]:
    st, body = http(server, "GET", "/judge0/statistics")
    assert st == 200
    return body  # type: ignore[no-any-return]


def _count(rows: list[dict[str, Any]], key: str, ident: int) -> int:
    return sum(r["count"] for r in rows if r[key]["id"] == ident)


def test_statistics_count_what_went_through(server: Server) -> None:
    before = _stats(server)
    assert set(before) == {"now", "cached_until", "submissions", "languages", "statuses", "database"}
    assert len(before["submissions"]["last_30_days"]) == 30
    ac = submit(server, source_code="print(1)", language_id=71, expected_output="1")
    wa = submit(server, source_code="print(2)", language_id=71, expected_output="1")
    assert (ac["status"]["id"], wa["status"]["id"]) == (3, 4)
    http(server, "GET", f"/judge0/submissions/{ac['token']}")  # served again: counted once
    after = _stats(server)
    assert after["submissions"]["total"] - before["submissions"]["total"] == 2
    assert after["submissions"]["today"] - before["submissions"]["today"] == 2
    assert _count(after["languages"], "language", 71) - _count(before["languages"], "language", 71) == 2
    assert _count(after["statuses"], "status", 3) - _count(before["statuses"], "status", 3) == 1
    assert _count(after["statuses"], "status", 4) - _count(before["statuses"], "status", 4) == 1
    names = {r["status"]["id"]: r["status"]["name"] for r in after["statuses"]}
    assert names[4] == "Wrong Answer"


@pytest.fixture(scope="module")
def secured() -> Iterator[Daemon]:
    d = Daemon(inst("-j0auth"), pool_size=1, env={"SANDBOXD_HTTP_TOKEN": TOKEN})
    yield d
    assert d.stop() == 0, d.output()


@pytest.mark.parametrize(
    ("headers", "authn", "authz"),
    [
        ({}, 401, 401),
        ({"X-Auth-Token": "wrong"}, 401, 401),
        ({"X-Auth-Token": TOKEN}, 200, 403),  # authenticated, not authorized
        ({"Authorization": f"Bearer {TOKEN}"}, 200, 403),
        ({"X-Auth-Token": TOKEN, "X-Auth-User": TOKEN}, 200, 200),
        ({"X-Auth-Token": TOKEN, "X-Auth-User": "wrong"}, 200, 403),
        ({"X-Auth-User": TOKEN}, 200, 200),  # one secret here: the authz header carries it too
    ],
)
def test_authenticate_and_authorize_with_a_token(
    secured: Daemon, headers: dict[str, str], authn: int, authz: int
) -> None:
    assert http(secured, "POST", "/judge0/authenticate", headers=headers)[0] == authn
    assert http(secured, "POST", "/judge0/authorize", headers=headers)[0] == authz


def test_x_auth_token_is_accepted_on_judge0_routes(secured: Daemon) -> None:
    # (before: 401, only `Authorization: Bearer` was read)
    st, langs = http(secured, "GET", "/judge0/languages", headers={"X-Auth-Token": TOKEN})
    assert st == 200 and any(x["id"] == 71 for x in langs)
    assert http(secured, "GET", "/judge0/languages", headers={"X-Auth-Token": "nope"})[0] == 401


def test_judge0_answers_browsers_from_any_origin(server: Server) -> None:
    # The daemon and a coordinator alike: Judge0's default is every origin.
    pre = {"Origin": "https://page.example", "Access-Control-Request-Method": "POST"}
    st, _ = http(server, "OPTIONS", "/judge0/submissions", headers=pre)
    assert st == 204
    req = urllib.request.Request(f"{server.http}/judge0/statuses", headers={"Origin": "https://page.example"})
    with urllib.request.urlopen(req, timeout=30) as r:
        assert r.headers["Access-Control-Allow-Origin"] == "*"
