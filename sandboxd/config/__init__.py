"""Daemon configuration: a TOML file (every key optional), then SANDBOXD_* env, then flags.

The file has a few top-level keys and sections ([log], [socket], [http],
[engine], [jobs], [fleet]: sections.py declares every setting and its default);
the flat keys of older files still work (flat.py).  An unknown key or a bad
value stops start-up with a message naming the key.  `sandboxd config
--defaults` prints the defaults.  This package imports nothing of the engine:
every process reads it, the coordinator included.
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
from pathlib import Path
from typing import Any

import msgspec

from sandboxd.bodyhold import MAX_COPIES
from sandboxd.config.flat import FLAT, PLACE, get, nest, put
from sandboxd.config.host import default_memory_budget, default_pool_size
from sandboxd.config.sections import (
    SECTIONS,
    Config,
    ConfigError,
    EngineSettings,
    FleetSettings,
    HttpSettings,
    JobsSettings,
    LogSettings,
    SessionsSettings,
    SocketSettings,
)

__all__ = [
    "COORDINATOR_DEFAULTS",
    "COORDINATOR_PATH",
    "DEFAULT",
    "DEFAULT_PATH",
    "ENGINE",
    "FIELDS",
    "FLEET",
    "HTTP",
    "JOBS",
    "SECTIONS",
    "Config",
    "ConfigError",
    "EngineSettings",
    "FleetSettings",
    "HttpSettings",
    "JobsSettings",
    "LogSettings",
    "SessionsSettings",
    "SocketSettings",
    "default_memory_budget",
    "default_pool_size",
    "get",
    "load",
]

DEFAULT_PATH = Path("/etc/sandboxd/sandboxd.toml")
COORDINATOR_PATH = Path("/etc/sandboxd/coordinator.toml")
# Where a coordinator listens unless configured: beside a host daemon on the same
# machine, in the runtime directory of systemd/sandboxd-coordinator.service.
COORDINATOR_DEFAULTS: dict[str, Any] = {
    "socket": {"path": "/run/sandboxd-coordinator/coordinator.sock"},
    "http": {"listen": "127.0.0.1:7080"},
}

# The defaults, for code that takes one setting instead of a section
# (`results_ttl: float = config.JOBS.results_ttl`): still declared once, in sections.py.
DEFAULT = Config()
HTTP, ENGINE, JOBS, FLEET = DEFAULT.http, DEFAULT.engine, DEFAULT.jobs, DEFAULT.fleet

# Every setting by its flat name (its environment variable, its flag).
FIELDS = tuple(FLAT)


# SANDBOXD_* variables that are not daemon settings: the client's (`sandboxd
# submit`), scripts/start.sh's, the test harness's and internal ones.  The
# daemon ignores them; any other SANDBOXD_<KEY> must name a setting.
RESERVED_ENV = ("SANDBOXD_ADDRESS", "SANDBOXD_TOKEN", "SANDBOXD_LOG", "SANDBOXD_IN_SCOPE", "SANDBOXD_CGROUP_DELEGATED")
RESERVED_ENV_PREFIXES = ("SANDBOXD_CLIENT_", "SANDBOXD_SCRIPT_", "SANDBOXD_VM_", "SANDBOXD_TEST_")


def env_setting(key: str) -> str | None:
    """The setting (flat name) an environment variable sets, None if it is not
    one of ours; raises ConfigError for a SANDBOXD_ name that is neither (a typo)."""
    if not key.startswith("SANDBOXD_") or key in RESERVED_ENV or key.startswith(RESERVED_ENV_PREFIXES):
        return None
    name = key.removeprefix("SANDBOXD_").lower()
    if name not in FLAT:
        raise ConfigError(f"{key}: unknown setting {name!r} (see `sandboxd config --defaults`)")
    return name


def _coerce_env(name: str, raw: str) -> Any:
    # Env values are strings: a string setting takes it as is; the others are
    # decoded as JSON (numbers, true, ["a"]) and converted with the field's type.
    if isinstance(get(DEFAULT, name), str):
        return raw
    try:
        return msgspec.json.decode(raw)
    except msgspec.DecodeError:
        return raw


def _merge(base: dict[str, Any], top: dict[str, Any]) -> None:
    for k, v in top.items():
        base[k] = {**base[k], **v} if isinstance(v, dict) and isinstance(base.get(k), dict) else v


def _read(p: Path) -> dict[str, Any]:
    try:
        return nest(tomllib.loads(p.read_text()), str(p))
    except FileNotFoundError:
        raise ConfigError(f"{p}: no such file") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{p}: {e}") from None


def load(
    path: Path | None = None,
    overrides: dict[str, Any] | None = None,
    env: dict[str, str] | None = None,
    defaults: dict[str, Any] | None = None,
    default_path: Path = DEFAULT_PATH,
) -> Config:
    """`overrides` (flags) by flat name; `defaults` (nested) replace Config's own
    (the coordinator listens elsewhere)."""
    data: dict[str, Any] = {}
    _merge(data, defaults or {})
    p = path if path is not None else default_path
    if p.exists() or path is not None:
        _merge(data, _read(p))
    for key, raw in (env if env is not None else os.environ).items():
        name = env_setting(key)
        if name is not None:
            put(data, name, _coerce_env(name, raw))
    for name, value in (overrides or {}).items():
        if value is not None:
            put(data, name, value)
    try:
        cfg = msgspec.convert(data, Config, strict=False)
    except msgspec.ValidationError as e:
        raise ConfigError(f"configuration: {e}".replace("$.", "")) from None
    check(cfg)
    return cfg


def http_is_loopback(addr: str) -> bool:
    host = addr.rpartition(":")[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_listeners(http: HttpSettings) -> None:
    seen: dict[str, str] = {}
    for key in ("listen", "judge0_listen", "piston_listen"):
        addr, name = getattr(http, key), f"http.{key}"
        if not addr:
            continue
        if addr in seen:
            raise ConfigError(f"{name}: {addr!r} is already {seen[addr]}'s address")
        seen[addr] = name
        host, _, port = addr.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(f"{name}: {addr!r} is not host:port")
        if not http_is_loopback(addr) and not http.token:
            raise ConfigError(f"http.token: required when {name} is beyond loopback (who can connect can run code)")


def check(cfg: Config) -> None:
    _check_listeners(cfg.http)
    budget = cfg.engine.memory_budget or default_memory_budget()
    need = int(MAX_COPIES * cfg.http.max_body)  # a request within max_body, with its copies, must be admissible
    if budget < need:
        raise ConfigError(
            f"engine.memory_budget: {budget} bytes is less than {MAX_COPIES:g} x http.max_body ({need}: "
            "a body and its decoded copies are held at once); raise it or lower http.max_body"
        )
    if not cfg.socket.path and not cfg.http.listen:
        raise ConfigError("socket.path, http.listen: at least one must be enabled")
    fleet = cfg.fleet
    if fleet.url:
        if not fleet.url.startswith(("redis://", "rediss://", "unix://")):
            raise ConfigError(f"fleet.url: {fleet.url!r} is not a redis://, rediss:// or unix:// URL")
        if fleet.heartbeat * 3 > fleet.lease:
            raise ConfigError("fleet.heartbeat: must be at most a third of fleet.lease, or leases expire between beats")


def _toml(value: Any) -> str:
    if isinstance(value, dict):  # lang_capacity: an inline table
        return "{" + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + "}"
    return msgspec.json.encode(value).decode()


def defaults_toml() -> str:
    """Every setting with its default, as TOML; each line names its environment variable."""
    out: list[str] = []
    tables: list[str] = []
    for name, value in msgspec.to_builtins(Config()).items():
        if name not in SECTIONS:
            out.append(f"{name} = {_toml(value)}  # SANDBOXD_{name.upper()}")
            continue
        tables.append(f"\n[{name}]")
        for key, v in value.items():
            tables.append(f"{key} = {_toml(v)}  # SANDBOXD_{PLACE[(name, key)].upper()}")
    return "\n".join(out + tables) + "\n"
