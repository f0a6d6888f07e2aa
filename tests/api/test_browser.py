"""The pages in a real browser: headless Chromium (Debian's) driven by Selenium
through Debian's chromium-driver, against a real daemon and a real fleet.

Each test drives a page as a user would (types, clicks) and reads the answer
from the DOM; a screenshot of each page goes to artifacts/screenshots/ (CI
keeps it).  The daemon has a bearer token: the page's token field is what
makes its calls pass.
"""

from __future__ import annotations

import base64
import json
import shutil
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from daemon_util import Daemon
from fleet_util import Coordinator, Redis
from instances import inst
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

TOKEN = "browser-test-token"
SHOTS = Path(__file__).resolve().parents[2] / "artifacts" / "screenshots"
# Not skipped when missing: scripts/install.sh installs both, so a missing one is a broken install.
CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")


@pytest.fixture(scope="module")
def daemon() -> Iterator[Daemon]:
    d = Daemon(inst("-browser"), pool_size=2, env={"SANDBOXD_HTTP_TOKEN": TOKEN})
    yield d
    assert d.stop() == 0, d.output()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    assert CHROMIUM and DRIVER, "chromium and chromium-driver: run scripts/install.sh"
    opts = Options()
    opts.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1100"):
        opts.add_argument(arg)  # (--no-sandbox: Chromium's own sandbox refuses to run as root)
    drv = webdriver.Chrome(service=Service(str(DRIVER)), options=opts)
    drv.set_script_timeout(30)
    SHOTS.mkdir(parents=True, exist_ok=True)
    yield drv
    drv.quit()


def until(drv: Any, cond: Callable[[], Any], timeout: float = 60, what: str = "") -> Any:
    return WebDriverWait(drv, timeout, poll_frequency=0.1).until(lambda _d: cond(), what)


def text(drv: Any, css: str) -> str:
    return str(drv.find_element(By.CSS_SELECTOR, css).text)


def cells(drv: Any, css: str) -> list[list[str]]:
    """The cells of a table's rows, read in one step (the dashboard replaces its rows every second)."""
    script = "return [...document.querySelectorAll(arguments[0])].map(r => [...r.cells].map(c => c.textContent))"
    return list(drv.execute_script(script, css))


def open_page(drv: Any, url: str) -> None:
    """Open a page with the token in localStorage, as a user who typed it once."""
    drv.get(url)
    drv.execute_script("localStorage.setItem('sandboxd.token', arguments[0])", TOKEN)
    drv.get(url)


def type_into(drv: Any, element_id: str, value: str) -> None:
    el = drv.find_element(By.ID, element_id)
    el.clear()
    el.send_keys(value)


def pick_language(drv: Any, lang: str) -> None:
    until(drv, lambda: drv.find_elements(By.CSS_SELECTOR, f"#lang option[value='{lang}']"), what="languages listed")
    Select(drv.find_element(By.ID, "lang")).select_by_value(lang)


def verdict(drv: Any) -> str:
    """The verdict shown once the page is no longer busy."""
    done = lambda: not text(drv, "#busy") and text(drv, "#verdict") not in ("-", "")  # noqa: E731
    until(drv, done, what="a verdict")
    return text(drv, "#verdict")


C_UPPER = (
    "#include <stdio.h>\n#include <ctype.h>\n"
    "int main(void){int c;while((c=getchar())!=EOF)putchar(toupper(c));return 0;}\n"
)
PY_REVERSE = "import sys\nprint(sys.stdin.read().strip()[::-1])\nprint('to stderr', file=sys.stderr)\n"


def test_playground_runs_a_program_with_stdin(daemon: Daemon, browser: Any) -> None:
    open_page(browser, daemon.http + "/")
    pick_language(browser, "python3")
    type_into(browser, "source", PY_REVERSE)
    type_into(browser, "stdin", "hello browser\n")
    browser.find_element(By.ID, "run").click()
    assert verdict(browser) == "AC"
    assert text(browser, "#stdout") == "resworb olleh"
    assert text(browser, "#stderr") == "to stderr"
    assert text(browser, "#status") == "exit 0"
    assert text(browser, "#time").endswith("s wall") and text(browser, "#memory").endswith("KiB")
    browser.save_screenshot(str(SHOTS / "playground-run.png"))


def test_playground_judges_against_typed_tests(daemon: Daemon, browser: Any) -> None:
    open_page(browser, daemon.http + "/")
    pick_language(browser, "c")
    type_into(browser, "source", C_UPPER)
    browser.find_element(By.ID, "add-test").click()
    inputs = browser.find_elements(By.CSS_SELECTOR, "#tests .test-input")
    expected = browser.find_elements(By.CSS_SELECTOR, "#tests .test-expected")
    assert len(inputs) == 2  # the page's sample test plus the added one
    for el, v in zip(inputs + expected, ["abc\n", "xy\n", "ABC\n", "XZ\n"], strict=True):
        el.clear()
        el.send_keys(v)
    browser.find_element(By.ID, "judge").click()
    assert verdict(browser) == "WA"  # the second test expects XZ, the program prints XY
    assert [row[1] for row in cells(browser, "#judge-table tbody tr")] == ["AC", "WA"]
    browser.save_screenshot(str(SHOTS / "playground-judge.png"))


def test_playground_shows_a_compile_error(daemon: Daemon, browser: Any) -> None:
    open_page(browser, daemon.http + "/")
    pick_language(browser, "c")
    type_into(browser, "source", "int main(void) { return missing; }\n")
    browser.find_element(By.ID, "run").click()
    assert verdict(browser) == "CE"
    assert "missing" in text(browser, "#stderr")


PY_UPPER_LINES = "import sys\nfor line in sys.stdin:\n    print(line.strip().upper(), flush=True)\nprint('bye')\n"


def _terminal_session(drv: Any, url: str) -> None:
    """A line typed in the terminal reaches the program while it runs; its answer
    comes back before stdin is closed; the result comes at the end."""
    open_page(drv, url + "/")
    pick_language(drv, "python3")
    type_into(drv, "source", PY_UPPER_LINES)
    drv.find_element(By.ID, "term-start").click()
    until(drv, lambda: text(drv, "#term-state") == "running", what="the session running")
    for word in ("hello", "again"):
        type_into(drv, "term-in", word + "\n")
        until(drv, lambda w=word: w.upper() in text(drv, "#term-out"), what=f"{word} echoed live")
    assert "bye" not in text(drv, "#term-out")  # still running: its stdin is open
    drv.find_element(By.ID, "term-eof").click()
    until(drv, lambda: text(drv, "#term-state") == "finished: ok (exit 0)", what="the session's result")
    assert text(drv, "#term-out").endswith("bye")


def test_terminal_is_live_over_the_session_websocket(daemon: Daemon, browser: Any) -> None:
    _terminal_session(browser, daemon.http)
    browser.save_screenshot(str(SHOTS / "playground-terminal.png"))


def _submit_runs(url: str, stop: threading.Event, headers: dict[str, str]) -> None:
    body = {"lang": "python3", "source": base64.b64encode(b"print(1)").decode(), "tests": [{"input": ""}]}
    while not stop.is_set():
        req = urllib.request.Request(url + "/v1/submissions", json.dumps(body).encode(), headers)
        with urllib.request.urlopen(req, timeout=60) as r:
            r.read()


def _runs_shown(drv: Any) -> int:
    return int(text(drv, "#runs") or 0)


def _watch_dashboard(drv: Any, url: str, headers: dict[str, str]) -> None:
    """Open the dashboard while a thread submits jobs; it must update: its run count grows, its plots get points."""
    open_page(drv, url + "/dashboard")
    stop = threading.Event()
    worker = threading.Thread(target=_submit_runs, args=(url, stop, headers), daemon=True)
    worker.start()
    try:
        until(drv, lambda: _runs_shown(drv) > 0, what="runs counted")
        first = _runs_shown(drv)
        until(drv, lambda: _runs_shown(drv) > first, what="the run count grows while jobs run")
        for plot in ("throughput", "latency"):
            points = drv.find_element(By.ID, plot).get_attribute("data-points")
            assert int(points) > 0, plot
        assert text(drv, "#p50").endswith(" s") and text(drv, "#error") == ""
    finally:
        stop.set()
        worker.join(60)


def test_dashboard_updates_while_jobs_run(daemon: Daemon, browser: Any) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    _watch_dashboard(browser, daemon.http, auth)
    assert text(browser, "#kind") == "daemon"
    pools = [row[0] for row in cells(browser, "#pools tbody tr")]
    assert pools and all(pools)
    assert cells(browser, "#queues tbody tr")
    browser.save_screenshot(str(SHOTS / "dashboard.png"))


def test_docs_lists_every_operation(daemon: Daemon, browser: Any) -> None:
    req = urllib.request.Request(daemon.http + "/openapi.json", headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(req, timeout=30) as r:
        doc = json.load(r)
    ops = {(m.upper(), p) for p, item in doc["paths"].items() for m in item if m in ("get", "post", "delete", "put")}
    open_page(browser, daemon.http + "/docs")
    until(browser, lambda: len(browser.find_elements(By.CSS_SELECTOR, "#ops .op")) == len(ops), what="operations")
    shown = {tuple(h.text.split(" ", 1)) for h in browser.find_elements(By.CSS_SELECTOR, "#ops .op h3")}
    assert shown == ops
    assert ("POST", "/judge0/submissions") in shown and ("POST", "/piston/api/v2/execute") in shown
    assert browser.find_elements(By.CSS_SELECTOR, "#ops pre.example")
    assert browser.find_elements(By.CSS_SELECTOR, "#schema-RunRequest td")
    # POST /v1/submissions' event stream: its media type, its events and their schemas.
    (sub,) = [
        o
        for o in browser.find_elements(By.CSS_SELECTOR, "#ops .op")
        if o.find_element(By.TAG_NAME, "h3").text == "POST /v1/submissions"
    ]
    assert "text/event-stream: With `Accept: text/event-stream`" in sub.text
    for event in ("accepted", "test TestResult", "result SubmissionResult", "error ErrorReply"):
        assert event in sub.text, event
    assert "event: accepted" in sub.text
    browser.save_screenshot(str(SHOTS / "docs.png"))


JSON = {"Content-Type": "application/json"}


def _queued_priorities(drv: Any) -> list[str]:
    return [row[1] for row in cells(drv, "#queues tbody tr")]


def test_coordinator_dashboard_lists_hosts(browser: Any) -> None:
    redis = Redis()
    fast = {"SANDBOXD_FLEET_LEASE": "2", "SANDBOXD_FLEET_HEARTBEAT": "0.5"}
    host: Daemon | None = None
    coord: Coordinator | None = None
    try:
        env = {**fast, "SANDBOXD_FLEET": redis.url, "SANDBOXD_FLEET_HOST_ID": "web-a"}
        host = Daemon(inst("-browser-host"), pool_size=1, env=env)
        coord = Coordinator(redis.url, fast)
        _watch_dashboard(browser, coord.http, JSON)
        until(browser, lambda: [r[0] for r in cells(browser, "#hosts tbody tr")] == ["web-a"], what="the host listed")
        assert text(browser, "#kind") == "coordinator: 1 hosts"
        # Jobs waiting behind a busy host show in the fleet's queues, by priority.
        for prio in (0, 0, 0, 5, 5, -3):
            run = {"cmd": ["sleep", "1"], "priority": prio}
            req = urllib.request.Request(coord.http + "/v1/runs?wait=false", json.dumps(run).encode(), JSON)
            urllib.request.urlopen(req, timeout=30).read()
        until(browser, lambda: {"5", "-3"} <= set(_queued_priorities(browser)), what="queues per priority")
        browser.save_screenshot(str(SHOTS / "dashboard-coordinator.png"))
        _terminal_session(browser, coord.http)  # through the coordinator, proxied to the host
    finally:
        if coord is not None:
            coord.stop()
        if host is not None:
            host.stop()
        redis.stop()


def test_pages_are_public_the_api_is_not(daemon: Daemon) -> None:
    """The pages and assets answer without the token, under the security headers; the API still wants it."""
    for path in ("/", "/playground", "/dashboard", "/docs", "/web/playground.js", "/web/style.css"):
        with urllib.request.urlopen(daemon.http + path, timeout=30) as r:
            assert r.status == 200, path
            assert "script-src 'self'" in r.headers["Content-Security-Policy"], path
            assert r.headers["X-Content-Type-Options"] == "nosniff", path
    for path, code in (("/v1/dashboard", 401), ("/v1/status", 401), ("/web/..%2Fpages.py", 404), ("/web/x.py", 404)):
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(daemon.http + path, timeout=30)
        assert e.value.code == code, path
