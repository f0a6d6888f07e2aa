"""The configuration: sections, the flat keys of older files, env and flags,
and every default declared once (the consumers' defaults are the config's).
Pure logic: no boxes, no root needed."""

from __future__ import annotations

import dataclasses
import inspect
import logging
import os
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import msgspec
import pytest

from sandboxd import config
from sandboxd.config import flat

ROOT = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "sandboxd.toml"
    p.write_text(text)
    return p


def test_config_loads_no_engine_sandbox_or_rootfs_code() -> None:
    # The coordinator reads the configuration and must load no engine code;
    # api/inbound.py imports it at the top now (no lazy import around a cycle).
    code = (
        "import sys, sandboxd.config, sandboxd.api.inbound\n"
        "print(' '.join(m for m in sys.modules if m.startswith(('sandboxd.engine', 'sandboxd.sandbox', "
        "'sandboxd.rootfs'))))"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "", r.stdout


def test_nested_sections_load(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    p = write(
        tmp_path,
        'instance = "a"\n[engine]\npool_size = 3\nlang_capacity = { java = 2 }\n'
        '[http]\nlisten = "127.0.0.1:9"\ntoken = "t"\n[socket]\npath = ""\n'
        '[fleet]\nurl = "redis://h:1/0"\ntags = ["x"]\n[jobs]\nstore = "/j.sqlite3"\n[log]\nlevel = "debug"\n',
    )
    cfg = config.load(p, env={})
    assert (cfg.instance, cfg.engine.pool_size, cfg.engine.lang_capacity) == ("a", 3, {"java": 2})
    assert (cfg.http.listen, cfg.http.token, cfg.socket.path) == ("127.0.0.1:9", "t", "")
    assert (cfg.fleet.url, cfg.fleet.tags, cfg.jobs.store, cfg.log.level) == (
        "redis://h:1/0",
        ["x"],
        "/j.sqlite3",
        "debug",
    )
    assert cfg.engine.queue_depth == config.ENGINE.queue_depth  # the rest: defaults
    assert "deprecated" not in caplog.text


def test_flat_keys_of_an_older_file_still_work_and_name_their_new_place(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    p = write(
        tmp_path,
        'pool_size = 3\nhttp = "127.0.0.1:9"\nhttp_token = "t"\nsocket = ""\nfleet = "redis://h:1/0"\n'
        'fleet_tags = ["x"]\njob_store = "/j.sqlite3"\njudge0_http = "127.0.0.1:2358"\ninstance = "a"\n',
    )
    with caplog.at_level(logging.WARNING, "sandboxd.config"):
        cfg = config.load(p, env={})
    assert (cfg.instance, cfg.engine.pool_size, cfg.http.listen, cfg.http.token) == ("a", 3, "127.0.0.1:9", "t")
    assert (cfg.socket.path, cfg.fleet.url, cfg.fleet.tags) == ("", "redis://h:1/0", ["x"])
    assert (cfg.jobs.store, cfg.http.judge0_listen) == ("/j.sqlite3", "127.0.0.1:2358")
    # One logged line per flat key, naming where it lives now (a log, not a
    # DeprecationWarning: pytest turns those from sandboxd.* into errors, and
    # an operator reads the journal, not warnings).
    moved = {r.getMessage() for r in caplog.records if r.name == "sandboxd.config"}
    assert f"{p}: `pool_size` is deprecated: set `pool_size` under [engine] (still read for now)" in moved
    assert f"{p}: `judge0_http` is deprecated: set `judge0_listen` under [http] (still read for now)" in moved
    assert f"{p}: `http` is deprecated: set `listen` under [http] (still read for now)" in moved
    assert len(moved) == 8 and all(r.levelno == logging.WARNING for r in caplog.records)  # not `instance`


def test_a_flat_key_beside_its_section_is_one_setting_given_twice(tmp_path: Path) -> None:
    p = write(tmp_path, "queue_depth = 5\n[engine]\nqueue_depth = 6\n")
    with pytest.raises(config.ConfigError, match=r"queue_depth and engine\.queue_depth are the same setting"):
        config.load(p, env={})
    p = write(tmp_path, "queue_depth = 5\n[engine]\naging = 2.0\n")  # beside other keys of its section: fine
    cfg = config.load(p, env={})
    assert (cfg.engine.queue_depth, cfg.engine.aging) == (5, 2.0)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("[engine]\npool_size = 0\n", r"engine\.pool_size"),
        ("[engine]\nno_such = 1\n", "no_such"),
        ("[nope]\nx = 1\n", "nope"),
        ('engine = "x"\n', "engine"),
        ('[fleet]\nurl = "http://x"\n', r"fleet\.url: 'http://x' is not a redis://"),
        ('[fleet]\nurl = "redis://x"\nheartbeat = 5.0\n', r"fleet\.heartbeat: must be at most a third"),
        ('[socket]\npath = ""\n[http]\nlisten = ""\n', "at least one must be enabled"),
        ('[http]\nlisten = "10.0.0.1:7070"\n', r"http\.token: required when http\.listen is beyond loopback"),
        (
            '[http]\njudge0_listen = "127.0.0.1:7070"\n',
            r"http\.judge0_listen: '127.0.0.1:7070' is already http\.listen",
        ),
    ],
)
def test_bad_settings_are_named_by_their_place(tmp_path: Path, text: str, match: str) -> None:
    with pytest.raises(config.ConfigError, match=match):
        config.load(write(tmp_path, text), env={})


def test_env_and_flags_use_the_flat_names_over_the_file(tmp_path: Path) -> None:
    p = write(tmp_path, '[fleet]\nurl = "redis://file:1/0"\nlease = 20.0\n[http]\ntoken = "file"\n')
    env = {
        "SANDBOXD_FLEET_LEASE": "30",
        "SANDBOXD_HTTP_TOKEN": "123",  # a string setting keeps the text (not the number 123)
        "SANDBOXD_FLEET_TAGS": '["a", "b"]',
        "SANDBOXD_SOCKET": "",
        "SANDBOXD_SELFTEST": "false",
    }
    cfg = config.load(p, {"fleet": "redis://flag:1/0", "pool_size": 2, "http": None}, env=env)
    assert (cfg.fleet.url, cfg.fleet.lease, cfg.fleet.tags) == ("redis://flag:1/0", 30.0, ["a", "b"])
    assert (cfg.http.token, cfg.socket.path, cfg.engine.selftest, cfg.engine.pool_size) == ("123", "", False, 2)
    assert cfg.http.listen == config.HTTP.listen  # a flag not given (None) changes nothing


def test_coordinator_defaults_are_under_the_file(tmp_path: Path) -> None:
    p = write(tmp_path, '[fleet]\nurl = "redis://h:1/0"\n[http]\ntoken = "t"\n')
    cfg = config.load(p, env={}, defaults=config.COORDINATOR_DEFAULTS)
    assert (cfg.http.listen, cfg.http.token) == (config.COORDINATOR_DEFAULTS["http"]["listen"], "t")
    assert cfg.socket.path == config.COORDINATOR_DEFAULTS["socket"]["path"]
    p = write(tmp_path, 'http = "127.0.0.1:7099"\n')  # an older coordinator.toml
    assert config.load(p, env={}, defaults=config.COORDINATOR_DEFAULTS).http.listen == "127.0.0.1:7099"


def test_every_setting_has_one_flat_name() -> None:
    leaves = {(s, k) for s, t in config.SECTIONS.items() for k in t.__struct_fields__} | {
        ("", f) for f in config.Config.__struct_fields__ if f not in config.SECTIONS
    }
    assert set(flat.FLAT.values()) == leaves and len(flat.FLAT) == len(leaves)
    for name in flat.FLAT:
        assert config.env_setting(f"SANDBOXD_{name.upper()}") == name


def test_defaults_toml_is_the_defaults_and_names_each_variable() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "sandboxd", "config", "--defaults"], capture_output=True, text=True, cwd=ROOT, timeout=60
    )
    assert r.returncode == 0, r.stderr
    assert msgspec.convert(tomllib.loads(r.stdout), config.Config) == config.Config()
    assert '[http]\nlisten = "127.0.0.1:7070"  # SANDBOXD_HTTP\n' in r.stdout
    assert "pool_size = " in r.stdout and "# SANDBOXD_POOL_SIZE" in r.stdout


def defaults_of(fn: Any) -> dict[str, Any]:
    return {n: p.default for n, p in inspect.signature(fn).parameters.items() if p.default is not p.empty}


def test_consumers_take_their_defaults_from_the_config() -> None:
    """Each default is declared in sandboxd/config/sections.py; a copy elsewhere would drift."""
    from sandboxd.api import httpserver
    from sandboxd.api.inbound import Inbound, default
    from sandboxd.engine.engine import EngineConfig
    from sandboxd.engine.pool import Pool
    from sandboxd.engine.scheduler import AdmissionQueue
    from sandboxd.fleet.coordinator import Coordinator
    from sandboxd.fleet.host import HostSettings
    from sandboxd.fleet.store import FleetStore
    from sandboxd.jobs.service import Service
    from sandboxd.sandbox import agentbin
    from sandboxd.sandbox.box import BoxSpec

    e, f, j = config.ENGINE, config.FLEET, config.JOBS
    ecfg = EngineConfig()
    assert (ecfg.instance, str(ecfg.run_dir), ecfg.max_runs_per_box) == ("default", "/run/sandboxd", e.max_runs_per_box)
    assert (ecfg.queue_depth, ecfg.aging, ecfg.memory_budget) == (e.queue_depth, e.aging, e.memory_budget)
    assert ecfg.pool_size == config.default_pool_size()
    assert (ecfg.box_bytes, ecfg.tmp_bytes, ecfg.shm_bytes) == (BoxSpec.box_bytes, BoxSpec.tmp_bytes, BoxSpec.shm_bytes)
    if "SANDBOXD_STATE_DIR" not in os.environ:  # (the agent's directory may be set apart from the config)
        assert Path(config.DEFAULT.state_dir) == agentbin.DEFAULT_DIR
    assert defaults_of(AdmissionQueue) == {"max_depth": e.queue_depth, "aging": e.aging}
    assert Pool.__dataclass_fields__["max_runs"].default == e.max_runs_per_box
    hs = HostSettings(host_id="h")
    assert (hs.lease, hs.heartbeat, hs.max_attempts) == (f.lease, f.heartbeat, f.max_attempts)
    c = defaults_of(Coordinator)
    assert (c["aging"], c["queue_depth"], c["max_attempts"], c["lease"]) == (
        e.aging,
        f.queue_depth,
        f.max_attempts,
        f.lease,
    )
    assert defaults_of(FleetStore) == {"prefix": f.prefix, "results_ttl": j.results_ttl}
    assert defaults_of(Service)["results_ttl"] == j.results_ttl
    assert defaults_of(httpserver.make_app)["max_body"] == config.HTTP.max_body
    assert defaults_of(httpserver.make_api_app)["max_body"] == config.HTTP.max_body
    limits = [f.name for f in dataclasses.fields(Inbound) if f.init and f.name not in ("connections", "budget")]
    assert {k: getattr(default(), k) for k in limits} == {
        "header_timeout": config.HTTP.header_timeout,
        "body_timeout": config.HTTP.body_timeout,
        "idle_timeout": config.HTTP.idle_timeout,
        "socket_idle_timeout": config.DEFAULT.socket.idle_timeout,
        "max_connections": config.HTTP.max_connections,
        "max_event_streams": config.HTTP.max_event_streams,
        "max_connections_per_listener": config.HTTP.max_connections_per_listener,
        "max_receiving_bytes": config.HTTP.max_receiving_bytes,
    }


def test_engine_and_host_settings_are_built_from_their_sections(tmp_path: Path) -> None:
    from sandboxd.engine.engine import EngineConfig
    from sandboxd.fleet.host import HostSettings

    p = write(
        tmp_path,
        'instance = "i"\nstate_dir = "/s"\nrun_dir = "/r"\n[engine]\npool_size = 3\nmax_runs_per_box = 7\n'
        'queue_depth = 9\naging = 2.5\nlang_capacity = { c = 1 }\nmemory_budget = 167772160\nlanguages_dir = "/l"\n'
        '[fleet]\nurl = "redis://h"\ntags = ["t"]\nonly_tagged = true\nlease = 30.0\nheartbeat = 2.0\n'
        "max_attempts = 5\n",
    )
    cfg = config.load(p, env={})
    ecfg = EngineConfig.from_config(cfg)
    assert (ecfg.instance, ecfg.state_dir, ecfg.run_dir, ecfg.languages_dir) == (
        "i",
        Path("/s"),
        Path("/r"),
        Path("/l"),
    )
    assert (ecfg.pool_size, ecfg.max_runs_per_box, ecfg.queue_depth, ecfg.aging) == (3, 7, 9, 2.5)
    assert (ecfg.lang_capacity, ecfg.memory_budget) == ({"c": 1}, 160 << 20)
    assert EngineConfig.from_config(config.Config()).languages_dir is None  # "": the packaged files
    hs = HostSettings.from_config(cfg.fleet, "h1", {"address": "a"})
    assert (hs.host_id, hs.tags, hs.only_tagged, hs.lease, hs.heartbeat, hs.max_attempts, hs.info) == (
        "h1",
        ["t"],
        True,
        30.0,
        2.0,
        5,
        {"address": "a"},
    )


def test_coordinator_without_a_fleet_is_refused_naming_the_setting() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "sandboxd", "coordinator", "--config", "/dev/null"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)},
    )
    assert r.returncode == 2 and "fleet: required here (--fleet or SANDBOXD_FLEET)" in r.stderr, r.stderr
