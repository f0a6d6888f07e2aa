"""What every test session shares, and which of the two suites it needs.

tests/unit/ is pure logic: no root, no namespaces, no daemon; it runs in
seconds as any user (`pytest tests/unit`).  Everything else runs as root
against the real kernel with the fixtures of the plugin tests/box_fixtures.py:
the root check, one real engine per session, the cgroup leak check.  That
plugin is loaded only when a session reaches beyond tests/unit, so a unit
session defines no root fixture and never meets the root check.

Why a plugin rather than a conftest.py of its own: the root tests live in
tests/ itself, above tests/unit, and a conftest applies to everything below
it.  `--confcutdir=tests/unit` would work too, but every unit run would have
to pass it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parent / "unit"


def _in_unit(arg: str, cwd: Path) -> bool:
    path = (cwd / arg.split("::", 1)[0]).resolve()
    return path == UNIT or UNIT in path.parents


def pytest_configure(config: pytest.Config) -> None:
    cwd = config.invocation_params.dir
    # --pyargs names modules, not paths: the root suite, to be safe.
    if config.option.pyargs or not all(_in_unit(a, cwd) for a in config.args):
        config.pluginmanager.import_plugin("box_fixtures")
