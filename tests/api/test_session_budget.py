"""A live session's frames count in the daemon's memory budget (issue 13).

A client frame on /v1/sessions may be up to 20 MiB (aiohttp keeps a message
whole until it is complete), and on lead the sessions' frames (max_sessions x
20 MiB and their copies) were outside the budget.  Now each session reserves
FRAMES_HOLD (holder "sessions") before its upgrade and gives it back when it
ends; a session the budget cannot hold is refused before a frame of it is
read: an error message (queue_full, retry_after) and close code 1013.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from collections.abc import Iterator

import pytest
from daemon_util import Daemon
from instances import inst
from session_util import Transcript, run, session, while_one_runs

from sandboxd.api.sessions import FRAMES_HOLD

MiB = 1 << 20
BUDGET = 64 * MiB  # one session's frames (40 MiB) fit; two do not
TOKEN = "session-budget-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def daemon() -> Iterator[Daemon]:
    env = {
        "SANDBOXD_HTTP_TOKEN": TOKEN,
        "SANDBOXD_MEMORY_BUDGET": str(BUDGET),
        "SANDBOXD_MAX_BODY": str(8 * MiB),
        "SANDBOXD_SESSION_MAX_SESSIONS": "2",  # (the cap would not refuse the second: the budget must)
    }
    d = Daemon(inst("-sessionbudget"), pool_size=2, env=env)
    yield d
    assert d.stop() == 0, d.output()


def _holders(d: Daemon) -> dict[str, int]:
    req = urllib.request.Request(d.http + "/v1/status", headers=AUTH)
    with urllib.request.urlopen(req, timeout=10) as r:
        holders: dict[str, int] = json.loads(r.read())["memory_budget"]["holders"]
    return holders


def _wait_freed(d: Daemon) -> None:
    deadline = time.monotonic() + 20  # (the server's end of a closed session, not a timing assertion)
    while _holders(d)["sessions"]:
        assert time.monotonic() < deadline, _holders(d)
        time.sleep(0.05)


def _url(d: Daemon) -> str:
    return d.http.replace("http://", "ws://") + "/v1/sessions"


def test_a_session_beyond_the_budget_is_refused_with_a_close_reason(daemon: Daemon) -> None:
    async def two() -> tuple[dict[str, int], Transcript]:
        async def during() -> tuple[dict[str, int], Transcript]:
            held = await asyncio.to_thread(_holders, daemon)
            return held, await session(_url(daemon), {"language": "python3", "source": "print(1)"}, headers=AUTH)

        return await while_one_runs(_url(daemon), AUTH, during)

    held, second = run(two())
    assert held["sessions"] == FRAMES_HOLD, held
    assert second.error["code"] == "queue_full" and second.error["retry_after"] >= 1, second.error
    assert "memory budget is full" in second.error["message"] and "session's frames" in second.error["message"]
    assert second.close_code == 1013
    _wait_freed(daemon)  # given back when the first ended
    # With the first gone, a session fits again.
    t = run(session(_url(daemon), {"language": "python3", "source": "print(1)"}, headers=AUTH))
    assert t.result["reason"] == "exit" and t.stdout == b"1\n" and t.close_code == 1000, t
    _wait_freed(daemon)
