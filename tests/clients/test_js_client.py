"""The JavaScript client (clients/js, `@sandboxd/client`): its type check
(tsc over index.d.ts, the JSDoc-typed implementation and a typed caller) and
its Node test runner suites, each against real daemons it starts itself
(clients/js/test/daemon.js), named after this session's instance prefix so
the cgroup leak check covers them."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

JS = Path(__file__).resolve().parents[2] / "clients" / "js"
SUITES = sorted(p.name for p in (JS / "test").glob("*.test.js"))


@pytest.fixture(scope="module")
def npm_ready() -> None:
    # Installed by scripts/install.sh; a no-op (no network) when the lock is unchanged.
    assert shutil.which("node") and shutil.which("npm"), "Node.js and npm: run scripts/install.sh"
    subprocess.run([str(JS / "install.sh")], check=True, timeout=600)


def _run(args: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SANDBOXD_TEST_PYTHON": sys.executable}
    return subprocess.run(args, cwd=JS, env=env, capture_output=True, text=True, timeout=timeout, check=False)


def test_types_check(npm_ready: None) -> None:
    r = _run([str(JS / "node_modules" / ".bin" / "tsc"), "-p", "tsconfig.json"], 300)
    assert r.returncode == 0, r.stdout + r.stderr


def test_suites_are_found() -> None:
    assert {"bytes.test.js", "client.test.js", "retry.test.js"} <= set(SUITES)


@pytest.mark.parametrize("suite", SUITES)
def test_node_suite(npm_ready: None, suite: str) -> None:
    r = _run(["node", "--test", f"test/{suite}"], 600)
    assert r.returncode == 0, r.stdout[-20000:] + r.stderr[-5000:]
    # Node's closing summary: something ran, nothing failed.
    ran = re.search(r"^# pass [1-9]\d*$", r.stdout, re.M)
    assert ran and re.search(r"^# fail 0$", r.stdout, re.M), r.stdout[-5000:]
