"""ansible/ agrees with the code and passes ansible-lint (fast, no VM; the VM
test tests/vm/test_ansible.py applies the playbooks to booted hosts)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import jinja2
import msgspec
import yaml

from sandboxd import config
from sandboxd.fleet.coordinator import DEFAULTS as COORDINATOR_DEFAULTS

ROOT = Path(__file__).resolve().parents[1]
ROLES = ROOT / "ansible" / "roles"
# Deliberate differences from the daemon's own defaults, as in systemd/sandboxd.toml.example:
# under systemd the socket belongs to the sandboxd group and journald gets JSON lines.
PRODUCTION = {"socket_group": "sandboxd", "log_format": "json"}


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def render(effective: dict[str, Any], command: str = "serve") -> str:
    env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True, undefined=jinja2.StrictUndefined)
    env.filters["to_json"] = json.dumps
    tmpl = env.from_string((ROLES / "sandboxd/templates/config.toml.j2").read_text())
    return tmpl.render(
        sandboxd_effective_config=effective, ansible_managed="Ansible managed", sandboxd_config_command=command
    )


def test_ansible_lint_is_clean() -> None:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}", "NO_COLOR": "1"}
    r = subprocess.run(
        [str(Path(sys.executable).parent / "ansible-lint"), "--offline", "--profile", "production", "ansible/"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert r.returncode == 0, r.stdout + r.stderr


def test_sandboxd_role_lists_every_setting_with_the_daemons_default() -> None:
    role = load(ROLES / "sandboxd/defaults/main.yml")["sandboxd_config_defaults"]
    defaults = msgspec.to_builtins(config.Config())
    assert set(role) == set(config.FIELDS), set(role) ^ set(config.FIELDS)
    for key, value in role.items():
        if key == "pool_size":
            assert value is None  # 2 x the host's cores, computed by the daemon
        else:
            assert value == PRODUCTION.get(key, defaults[key]), key


def test_coordinator_role_defaults_are_the_coordinators() -> None:
    role = load(ROLES / "coordinator/defaults/main.yml")["coordinator_config_defaults"]
    defaults = {**msgspec.to_builtins(config.Config()), **COORDINATOR_DEFAULTS, **PRODUCTION}
    assert set(role) <= set(config.FIELDS)
    assert {k: defaults[k] for k in role} == role
    assert {"fleet", "socket", "http", "http_token", "fleet_queue_depth"} <= set(role)


def test_config_template_renders_a_valid_config(tmp_path: Path) -> None:
    role = load(ROLES / "sandboxd/defaults/main.yml")["sandboxd_config_defaults"]
    effective = {
        **role,
        "fleet": "redis://10.0.0.5:6379/0",
        "fleet_host_id": "judge1",
        "fleet_tags": ["contest", "x-1"],
        "lang_capacity": {"java": 2, "c": 8},
        "http_token": 'tok"en\\',
    }
    text = render(effective)
    path = tmp_path / "sandboxd.toml"
    path.write_text(text)
    cfg = config.load(path, env={})
    assert cfg.fleet_tags == ["contest", "x-1"] and cfg.lang_capacity == {"c": 8, "java": 2}
    assert cfg.http_token == 'tok"en\\' and cfg.fleet_host_id == "judge1"
    assert cfg.pool_size == config.Config().pool_size  # null: left to the daemon
    assert "# pool_size: the daemon's default" in text


def test_rolling_upgrade_is_one_host_at_a_time_and_stops_on_failure() -> None:
    (play,) = load(ROOT / "ansible/rolling-upgrade.yml")
    assert play["hosts"] == "judges" and play["serial"] == 1
    assert play["max_fail_percentage"] == 0 and play["any_errors_fatal"] is True
    names = [t["name"] for t in play["tasks"]]
    assert names[0].startswith("Drain") and names[-1].startswith("Undrain"), names
    upgrade_at = names.index("Upgrade, restart and health-check the host")
    assert names.index("Wait until the host has no job left") < upgrade_at
    upgrade = play["tasks"][upgrade_at]
    assert upgrade["ansible.builtin.include_role"]["name"] == "sandboxd"
    health = load(ROLES / "sandboxd/tasks/health.yml")
    assert "/v1/runs" in health[0]["ansible.builtin.uri"]["url"]  # a real run, not /healthz
    site = load(ROOT / "ansible/site.yml")
    assert [(p["hosts"], p["roles"]) for p in site] == [("coordinators", ["coordinator"]), ("judges", ["sandboxd"])]
