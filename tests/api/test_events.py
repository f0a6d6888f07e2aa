"""A submission's progress over HTTP (Server-Sent Events, sandboxd/api/sse.py): the
events the socket streams, bounded streams, and `sandboxd submit` drawing its bar
over HTTP as over the socket."""

from __future__ import annotations

import base64
import json
import os
import pty
import select
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from daemon_util import SUM_C, Daemon, sum_tests
from instances import inst


@pytest.fixture(scope="module")
def daemon() -> Iterator[Daemon]:
    d = Daemon(inst("-events"), pool_size=2, env={"SANDBOXD_HTTP_MAX_EVENT_STREAMS": "1"})
    yield d
    assert d.stop() == 0, d.output()


def submission(n: int, source: str = SUM_C, lang: str = "c") -> dict[str, Any]:
    tests = [{"input": f"{i} {i}\n", "expected": f"{2 * i if i != 2 else 0}\n"} for i in range(n)]
    return {"lang": lang, "source": source, "tests": tests}


def encoded(body: dict[str, Any]) -> dict[str, Any]:
    """The submission as JSON carries it: bytes fields in base64."""

    def b64(text: str) -> str:
        return base64.b64encode(text.encode()).decode()

    tests = [{k: b64(v) for k, v in t.items()} for t in body["tests"]]
    return {**body, "source": b64(body["source"]), "tests": tests}


def events_request(d: Daemon, body: dict[str, Any]) -> urllib.request.Request:
    """POST /v1/submissions of `body`, asking for its events."""
    return urllib.request.Request(
        f"{d.http}/v1/submissions",
        data=json.dumps(encoded(body)).encode(),
        headers={"Content-Type": "application/json", "Accept": "text/event-stream"},
    )


def stream(d: Daemon, body: dict[str, Any]) -> tuple[int, str, list[tuple[str, Any]]]:
    """(status, Content-Type, [(event, data)]) of a submission asked for as an event stream."""
    req = events_request(d, body)
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            st, ctype, raw = r.status, r.headers.get("Content-Type", ""), r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type", ""), [("reply", json.loads(e.read()))]
    events: list[tuple[str, Any]] = []
    for block in raw.split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines() if not line.startswith(":"))
        if "event" in lines:
            events.append((lines["event"], json.loads(lines["data"])))
    return st, ctype, events


def test_submission_streams_accepted_tests_then_result(daemon: Daemon) -> None:
    st, ctype, events = stream(daemon, submission(5))
    assert st == 200 and ctype.startswith("text/event-stream"), events
    kinds = [e for e, _ in events]
    assert kinds == ["accepted", "test", "test", "test", "test", "test", "result"], events
    job = events[0][1]["job"]
    assert sorted(d["index"] for e, d in events if e == "test") == list(range(5))
    res = events[-1][1]
    assert res["verdict"] == "WA" and [t["verdict"] for t in res["tests"]] == ["AC", "AC", "WA", "AC", "AC"]
    # (the job is an ordinary one: readable afterwards)
    with urllib.request.urlopen(f"{daemon.http}/v1/jobs/{job}", timeout=30) as r:
        assert json.loads(r.read())["state"] == "done"


def test_a_refused_submission_is_a_plain_error_reply(daemon: Daemon) -> None:
    st, ctype, events = stream(daemon, submission(1, lang="cobol"))
    assert (st, ctype.split(";")[0]) == (400, "application/json") and "cobol" in events[0][1]["error"]["message"]


def test_event_streams_are_capped(daemon: Daemon) -> None:
    slow = submission(1, "import time\ntime.sleep(3)\nprint(2)\n", "python3")
    opened, lines = threading.Event(), []

    def first() -> None:  # the one stream the daemon allows, read as it comes
        req = events_request(daemon, slow)
        with urllib.request.urlopen(req, timeout=120) as r:
            for line in r:
                lines.append(line.decode())
                if line.startswith(b"event: accepted"):
                    opened.set()

    t = threading.Thread(target=first)
    t.start()
    try:
        assert opened.wait(60), lines
        st, _, events = stream(daemon, submission(1))
        assert st == 503 and events[0][1]["error"]["code"] == "queue_full", events
        assert "max_event_streams" in events[0][1]["error"]["message"]
    finally:
        t.join(60)
    assert "event: result\n" in lines, lines
    # (and once it is closed, the next one opens)
    assert stream(daemon, submission(1))[0] == 200


def test_submit_command_draws_its_bar_over_http(daemon: Daemon, tmp_path: Path) -> None:
    tests, src = sum_tests(tmp_path, 6, 4)
    cmd = [sys.executable, "-m", "sandboxd", "submit", "--address", daemon.http, "--lang", "c", "--tests", str(tests)]
    master, slave = pty.openpty()  # the bar is drawn on a terminal only
    # (this tree's client, whatever the venv has installed)
    client = str(Path(__file__).resolve().parents[2] / "clients" / "python")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([client, os.environ.get("PYTHONPATH", "")])}
    p = subprocess.Popen([*cmd, str(src)], stdout=subprocess.PIPE, stderr=slave, env=env)
    os.close(slave)
    bar = b""
    while True:
        ready, _, _ = select.select([master], [], [], 120)
        if not ready:
            break
        try:
            chunk = os.read(master, 4096)
        except OSError:  # (EIO: the child closed the terminal)
            break
        if not chunk:
            break
        bar += chunk
    os.close(master)
    out = p.communicate(timeout=60)[0].decode()
    assert p.returncode == 1 and out.splitlines()[-1].startswith("verdict: WA"), out
    frames = [f for f in bar.decode().split("\r") if f.strip()]
    assert [f.split("]")[1].split()[0] for f in frames] == [f"{i}/6" for i in range(1, 7)], bar
    assert frames[-1].strip().endswith("6/6  failed 1"), bar


def test_a_submission_cancelled_mid_stream_ends_with_a_cancelled_error(daemon: Daemon) -> None:
    """Not with a `result` (it once ended 'AC' with no tests: the judge swallowed its cancel)."""
    slow = submission(2, "import time\ntime.sleep(30)\n", "python3")
    job: list[str] = []
    lines: list[str] = []
    accepted = threading.Event()

    def reader() -> None:
        req = events_request(daemon, slow)
        with urllib.request.urlopen(req, timeout=120) as r:
            for raw in r:
                line = raw.decode()
                lines.append(line)
                if line.startswith("data: ") and not job:
                    job.append(json.loads(line[6:])["job"])
                    accepted.set()

    t = threading.Thread(target=reader)
    t.start()
    try:
        assert accepted.wait(60), lines
        time.sleep(1.5)  # (compiled; its tests sleeping in their boxes)
        req = urllib.request.Request(f"{daemon.http}/v1/jobs/{job[0]}", method="DELETE")
        with urllib.request.urlopen(req, timeout=30) as r:
            assert r.status == 200
    finally:
        t.join(60)
    events = [line.split(": ", 1)[1].strip() for line in lines if line.startswith("event: ")]
    assert events[0] == "accepted" and events[-1] == "error" and "result" not in events, lines
    assert '"cancelled"' in lines[-2] or '"cancelled"' in "".join(lines[-3:]), lines
    with urllib.request.urlopen(f"{daemon.http}/v1/jobs/{job[0]}", timeout=30) as r:
        assert json.loads(r.read())["state"] == "cancelled"
