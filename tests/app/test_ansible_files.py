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
import pytest
import yaml

from sandboxd import config

ROOT = Path(__file__).resolve().parents[2]
ROLES = ROOT / "ansible" / "roles"
# Deliberate differences from the daemon's own defaults, as in systemd/sandboxd.toml.example:
# under systemd the socket belongs to the sandboxd group and journald gets JSON lines.
PRODUCTION = {"socket": {"group": "sandboxd"}, "log": {"format": "json"}}


def merged(*layers: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for layer in layers:
        for k, v in layer.items():
            out[k] = {**out[k], **v} if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def daemon_defaults(*layers: dict[str, Any]) -> dict[str, Any]:
    return merged(msgspec.to_builtins(config.Config()), *layers, PRODUCTION)


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
    # pool_size: null = 2 x the host's cores, computed by the daemon.
    assert role == daemon_defaults({"engine": {"pool_size": None}})


def test_coordinator_role_defaults_are_the_coordinators() -> None:
    role = load(ROLES / "coordinator/defaults/main.yml")["coordinator_config_defaults"]
    defaults = daemon_defaults(config.COORDINATOR_DEFAULTS)
    assert set(role) <= set(defaults)
    for key, value in role.items():
        assert value == ({k: defaults[key][k] for k in value} if isinstance(value, dict) else defaults[key]), key
    assert {"url", "queue_depth"} <= set(role["fleet"]) and {"listen", "token"} <= set(role["http"])
    assert role["socket"]["path"] == config.COORDINATOR_DEFAULTS["socket"]["path"]


def test_role_moves_the_same_flat_keys_as_the_daemon() -> None:
    table = load(ROLES / "sandboxd/vars/main.yml")["sandboxd_flat_keys"]
    assert table == {flat: f"{s}.{k}" for flat, (s, k) in config.FLAT.items() if s}


def test_config_template_renders_a_valid_config(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    role = load(ROLES / "sandboxd/defaults/main.yml")["sandboxd_config_defaults"]
    effective = merged(
        role,
        {
            "fleet": {"url": "redis://10.0.0.5:6379/0", "host_id": "judge1", "tags": ["contest", "x-1"]},
            "engine": {"lang_capacity": {"java": 2, "c": 8}},
            "http": {"token": 'tok"en\\'},
        },
    )
    text = render(effective)
    path = tmp_path / "sandboxd.toml"
    path.write_text(text)
    cfg = config.load(path, env={})
    assert cfg.fleet.tags == ["contest", "x-1"] and cfg.engine.lang_capacity == {"c": 8, "java": 2}
    assert cfg.http.token == 'tok"en\\' and cfg.fleet.host_id == "judge1"
    assert cfg.engine.pool_size == config.Config().engine.pool_size  # null: left to the daemon
    assert "# pool_size: the daemon's default" in text
    assert "deprecated" not in caplog.text


def run_settings(
    tmp_path: Path, defaults: str, settings: dict[str, Any], role: str = "sandboxd"
) -> tuple[dict[str, Any], str]:
    """The role's real merge (tasks/settings.yml) and template, by ansible-playbook on this machine;
    `defaults`: an expression over `role`'s defaults."""
    play = [
        {
            "hosts": "localhost",
            "connection": "local",
            "gather_facts": False,
            "vars": {"ansible_python_interpreter": sys.executable},
            "vars_files": [str(ROLES / role / "defaults/main.yml")],
            "tasks": [
                {
                    "ansible.builtin.include_role": {"name": "sandboxd", "tasks_from": "settings.yml"},
                    "vars": {"sandboxd_settings_defaults": f"{{{{ {defaults} }}}}", "sandboxd_settings": settings},
                },
                {
                    "ansible.builtin.template": {
                        "src": str(ROLES / "sandboxd/templates/config.toml.j2"),
                        "dest": str(tmp_path / "out.toml"),
                        "mode": "0644",
                    }
                },
                {
                    "ansible.builtin.copy": {
                        "content": "{{ sandboxd_effective_config | to_json }}",
                        "dest": str(tmp_path / "effective.json"),
                        "mode": "0644",
                    }
                },
            ],
        }
    ]
    (tmp_path / "play.yml").write_text(yaml.safe_dump(play))
    bindir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bindir}:{os.environ.get('PATH', '')}", "ANSIBLE_ROLES_PATH": str(ROLES)}
    env["ANSIBLE_LOCALHOST_WARNING"] = "false"
    r = subprocess.run(
        [str(bindir / "ansible-playbook"), "-i", "localhost,", str(tmp_path / "play.yml")],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    return json.loads((tmp_path / "effective.json").read_text()), (tmp_path / "out.toml").read_text()


def test_role_moves_an_older_inventorys_flat_keys_into_sections(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    flat = {"pool_size": 2, "selftest": False, "http": "0.0.0.0:7070", "http_token": "t", "fleet_tags": ["contest"]}
    nested = {"engine": {"queue_depth": 5}, "fleet": {"only_tagged": True}}
    effective, text = run_settings(
        tmp_path,
        "sandboxd_config_defaults | combine({'fleet': {'url': 'redis://10.0.0.5:6379/0'}}, recursive=True)",
        {**flat, **nested},
    )
    left = {k for k in flat if not isinstance(effective.get(k, {}), dict)}  # ("http" is a section now)
    assert not left, effective
    (tmp_path / "sandboxd.toml").write_text(text)
    cfg = config.load(tmp_path / "sandboxd.toml", env={})
    assert "deprecated" not in caplog.text  # the file has one spelling per setting
    assert (cfg.engine.pool_size, cfg.engine.selftest, cfg.engine.queue_depth) == (2, False, 5)
    assert (cfg.http.listen, cfg.http.token) == ("0.0.0.0:7070", "t")
    assert (cfg.fleet.url, cfg.fleet.tags, cfg.fleet.only_tagged) == ("redis://10.0.0.5:6379/0", ["contest"], True)
    assert (cfg.socket.group, cfg.log.format) == ("sandboxd", "json")  # the role's own, kept beside the moved keys


def test_coordinator_role_settings_load_as_a_coordinator(tmp_path: Path) -> None:
    defaults = "coordinator_config_defaults | combine({'fleet': {'url': 'redis://10.0.0.5:6379/0'}}, recursive=True)"
    with_flat = {"http": "0.0.0.0:7080", "http_token": "t", "fleet_queue_depth": 7}
    _, text = run_settings(tmp_path, defaults, with_flat, role="coordinator")
    (tmp_path / "coordinator.toml").write_text(text)
    cfg = config.load(tmp_path / "coordinator.toml", env={}, defaults=config.COORDINATOR_DEFAULTS)
    assert (cfg.http.listen, cfg.http.token, cfg.fleet.queue_depth) == ("0.0.0.0:7080", "t", 7)
    assert cfg.socket.path == config.COORDINATOR_DEFAULTS["socket"]["path"]


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
    install, *roles = site
    assert install["hosts"] == "coordinators:judges"
    assert install["tasks"][0]["ansible.builtin.include_role"] == {"name": "sandboxd", "tasks_from": "install.yml"}
    assert [(p["hosts"], p["roles"]) for p in roles] == [("coordinators", ["coordinator"]), ("judges", ["sandboxd"])]
