"""The files in systemd/ agree with the code (fast, no VM; the VM test
tests/vm/test_systemd.py installs and runs them for real)."""

from __future__ import annotations

import configparser
import re
import tomllib
from pathlib import Path

import msgspec

from sandboxd import config, hostlock

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "systemd/sandboxd.toml.example"
UNIT = ROOT / "systemd/sandboxd.service"


def commented_defaults() -> dict[str, object]:
    out = {}
    for line in EXAMPLE.read_text().splitlines():
        if re.match(r"#[a-z0-9_]+ = ", line):
            out.update(tomllib.loads(line[1:]))
    return out


def test_example_config_lists_every_key_with_its_default() -> None:
    shown = commented_defaults()
    assert set(shown) == set(config.FIELDS), set(shown) ^ set(config.FIELDS)
    defaults = msgspec.to_builtins(config.Config())
    for key, value in shown.items():
        if key != "pool_size":  # 2 x the cores of the machine: the example shows one
            assert value == defaults[key], key


def test_example_config_loads_with_what_systemd_needs() -> None:
    cfg = config.load(EXAMPLE, env={})
    assert (cfg.socket_group, cfg.log_format) == ("sandboxd", "json")
    set_keys = set(tomllib.loads(EXAMPLE.read_text()))
    assert set_keys == {"socket_group", "log_format"}, set_keys


def test_unit_matches_the_config_defaults() -> None:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read_string(UNIT.read_text())
    svc = unit["Service"]
    defaults = config.Config()
    assert svc["ExecStart"] == "/opt/sandboxd/venv/bin/sandboxd serve --config /etc/sandboxd/sandboxd.toml"
    assert f"/run/{svc['RuntimeDirectory']}" == defaults.run_dir == str(Path(defaults.socket).parent)
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


def test_coordinator_unit_and_example_agree() -> None:
    from sandboxd.fleet.coordinator import DEFAULTS

    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read_string((ROOT / "systemd/sandboxd-coordinator.service").read_text())
    svc = unit["Service"]
    example = ROOT / "systemd/coordinator.toml.example"
    assert svc["ExecStart"].endswith(f"sandboxd coordinator --config /etc/sandboxd/{example.stem.split('.')[0]}.toml")
    assert svc["ExecStart"].startswith("/opt/sandboxd/venv/bin/")
    cfg = config.load(example, env={}, defaults=DEFAULTS)
    assert cfg.fleet.startswith("redis://") and cfg.socket_group == "sandboxd"
    assert f"/run/{svc['RuntimeDirectory']}" == str(Path(cfg.socket).parent)
    assert svc["Type"] == "notify" and svc["DynamicUser"] == "yes" and svc["CapabilityBoundingSet"] == ""
    assert int(svc["TimeoutStopSec"].removesuffix("s")) > cfg.drain_timeout
    for line in example.read_text().splitlines():  # commented keys show the coordinator's defaults
        if re.match(r"#[a-z0-9_]+ = ", line):
            ((key, value),) = tomllib.loads(line[1:]).items()
            assert getattr(cfg, key) == value, key
