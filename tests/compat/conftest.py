"""Fixtures of the compat tests: every test of the APIs runs against a host daemon
and, again, through a coordinator in front of a fleet (tests/compat/util.py)."""

from __future__ import annotations

from collections.abc import Iterator

import judge0
import pytest
from daemon_util import Daemon
from instances import inst

from compat.util import BODY_ENV, FleetStack, Server


@pytest.fixture(scope="package", params=["daemon", "fleet"])
def server(request: pytest.FixtureRequest) -> Iterator[Server]:
    """Every test of the APIs runs against a host daemon and through a coordinator.
    One of each per test package (judge0/, piston/, this one), not per module:
    a fleet takes seconds to start."""
    s: Server = Daemon(inst("-compat"), pool_size=4, env=BODY_ENV) if request.param == "daemon" else FleetStack()
    yield s
    assert s.stop() == 0, s.output()


@pytest.fixture(scope="module")
def client(server: Server) -> judge0.Client:
    return judge0.Client(f"{server.http}/judge0", headers={})
