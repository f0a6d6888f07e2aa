"""The files in systemd/ agree with the code (fast, no VM; the VM test
tests/vm/test_systemd.py installs and runs them for real)."""

from __future__ import annotations

import configparser
import re
import tomllib
from pathlib import Path

import pytest

from sandboxd import config, hostlock

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "systemd/sandboxd.toml.example"
UNIT = ROOT / "systemd/sandboxd.service"


def commented_defaults(path: Path = EXAMPLE) -> dict[tuple[str, str], object]:
    """(section or "", key) -> value of each commented `#key = value` line."""
    out: dict[tuple[str, str], object] = {}
    section = ""
    for line in path.read_text().splitlines():
        if m := re.match(r"\[([a-z]+)\]$", line):
            section = m[1]
        elif re.match(r"#[a-z0-9_]+ = ", line):
            ((key, value),) = tomllib.loads(line[1:]).items()
            out[(section, key)] = value
    return out


def set_keys(path: Path = EXAMPLE) -> dict[tuple[str, str], object]:
    data = tomllib.loads(path.read_text())
    return {
        (s, k): v for s, keys in data.items() for k, v in (keys.items() if isinstance(keys, dict) else [("", keys)])
    }


def test_example_config_lists_every_key_with_its_default() -> None:
    shown = commented_defaults()
    every = set(config.flat.PLACE)  # (section, key) of every setting
    assert set(shown) | set(set_keys()) == every, (set(shown) | set(set_keys())) ^ every
    assert not set(shown) & set(set_keys())
    for (section, key), value in shown.items():
        if (section, key) != ("engine", "pool_size"):  # 2 x the cores of the machine: the example shows one
            assert value == config.get(config.DEFAULT, config.flat.PLACE[(section, key)]), (section, key)


def test_example_config_loads_with_what_systemd_needs(caplog: pytest.LogCaptureFixture) -> None:
    cfg = config.load(EXAMPLE, env={})
    assert (cfg.socket.group, cfg.log.format) == ("sandboxd", "json")
    assert set(set_keys()) == {("socket", "group"), ("log", "format")}, set_keys()
    assert "deprecated" not in caplog.text  # the example is in the current form


def test_unit_matches_the_config_defaults() -> None:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read_string(UNIT.read_text())
    svc = unit["Service"]
    defaults = config.Config()
    assert svc["ExecStart"] == "/opt/sandboxd/venv/bin/sandboxd serve --config /etc/sandboxd/sandboxd.toml"
    assert f"/run/{svc['RuntimeDirectory']}" == defaults.run_dir == str(Path(defaults.socket.path).parent)
    # The host-wide locks must be writable under ProtectSystem=strict, whatever run_dir is.
    assert svc["ProtectSystem"] == "strict" and svc["RuntimeDirectoryPreserve"] == "yes"
    assert hostlock.LOCK_DIR.is_relative_to(f"/run/{svc['RuntimeDirectory']}")
    assert f"/var/lib/{svc['StateDirectory']}" == defaults.state_dir
    # systemd must not SIGKILL the daemon while it drains.
    assert int(svc["TimeoutStopSec"].removesuffix("s")) >= defaults.drain_timeout + 30
    assert (svc["Type"], svc["Delegate"], svc["KillMode"], svc["OOMPolicy"]) == ("notify", "yes", "mixed", "continue")
    assert "WatchdogSec" in svc and "CAP_SETPCAP" in svc["CapabilityBoundingSet"]
    sysusers = (ROOT / "systemd/sysusers.d/sandboxd.conf").read_text()
    assert re.search(r"^g sandboxd -$", sysusers, re.M)


def test_coordinator_unit_and_example_agree(caplog: pytest.LogCaptureFixture) -> None:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read_string((ROOT / "systemd/sandboxd-coordinator.service").read_text())
    svc = unit["Service"]
    example = ROOT / "systemd/coordinator.toml.example"
    assert svc["ExecStart"].endswith(f"sandboxd coordinator --config /etc/sandboxd/{example.stem.split('.')[0]}.toml")
    assert svc["ExecStart"].startswith("/opt/sandboxd/venv/bin/")
    cfg = config.load(example, env={}, defaults=config.COORDINATOR_DEFAULTS)
    assert "deprecated" not in caplog.text
    assert cfg.fleet.url.startswith("redis://") and cfg.socket.group == "sandboxd"
    assert f"/run/{svc['RuntimeDirectory']}" == str(Path(cfg.socket.path).parent)
    assert svc["Type"] == "notify" and svc["DynamicUser"] == "yes" and svc["CapabilityBoundingSet"] == ""
    assert int(svc["TimeoutStopSec"].removesuffix("s")) > cfg.drain_timeout
    for (section, key), value in commented_defaults(example).items():  # the coordinator's defaults
        assert config.get(cfg, config.flat.PLACE[(section, key)]) == value, (section, key)
