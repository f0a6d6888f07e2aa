"""Daemon configuration: a TOML file (every key optional), then SANDBOXD_* env, then flags.

An unknown key or a bad value stops start-up with a message naming the key.
The defaults below are the documentation: `sandboxd config --defaults` prints them.
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from sandboxd.engine.budget import default_memory_budget
from sandboxd.engine.engine import default_pool_size
from sandboxd.schema import HostTag

DEFAULT_PATH = Path("/etc/sandboxd/sandboxd.toml")
COORDINATOR_PATH = Path("/etc/sandboxd/coordinator.toml")


class ConfigError(ValueError):
    pass


class Config(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    # Name of this daemon on the host: cgroups, locks and uid leases are per instance.
    instance: str = "default"
    # Unix socket for local judges and the Python client; "" disables it.
    socket: str = "/run/sandboxd/sandboxd.sock"
    # Who may connect is who may run code: keep it to a group.
    socket_mode: Annotated[str, Meta(pattern=r"^0?[0-7]{3}$")] = "0660"
    socket_group: str = ""  # "" keeps root's group; e.g. "sandboxd"
    # HTTP listen address "host:port"; "" disables HTTP.
    http: str = "127.0.0.1:7070"
    # Bearer token for HTTP; required when `http` is not a loopback address.
    http_token: str = ""
    max_body: Annotated[int, Meta(ge=1024)] = 64 << 20  # bytes, per HTTP body or socket frame
    # --- limits on input (sandboxd/api/inbound.py, httpguard.py; README "Limits on input").
    # Seconds a connection has to deliver a request's headers (HTTP) or its
    # first frame (socket), from connecting or from its first byte after idling.
    http_header_timeout: Annotated[float, Meta(gt=0)] = 10.0
    # Seconds to receive one request body or socket frame, whatever the rate;
    # also how long a client may leave its reply unread.
    http_body_timeout: Annotated[float, Meta(gt=0)] = 60.0
    http_idle_timeout: Annotated[float, Meta(gt=0)] = 75.0  # keep-alive connection with no request
    socket_idle_timeout: Annotated[float, Meta(gt=0)] = 600.0  # socket connection with nothing in flight
    max_connections: Annotated[int, Meta(ge=1)] = 4096  # all listeners and the socket; beyond: 503
    max_connections_per_listener: Annotated[int, Meta(ge=1)] = 1024
    # Bytes of request bodies and frames being received at once, daemon-wide
    # (reserved before reading); beyond: 503 + Retry-After (socket: waits).
    max_receiving_bytes: Annotated[int, Meta(ge=1024)] = 256 << 20
    pool_size: Annotated[int, Meta(ge=1, le=1024)] = msgspec.field(default_factory=default_pool_size)
    max_runs_per_box: Annotated[int, Meta(ge=1)] = 1000
    queue_depth: Annotated[int, Meta(ge=1)] = 10_000  # waiting runs per pool; beyond: rejected (429)
    aging: Annotated[float, Meta(ge=0)] = 1.0  # priority points a waiting run gains per second
    lang_capacity: dict[str, Annotated[int, Meta(ge=1)]] = msgspec.field(default_factory=dict)
    results_ttl: Annotated[float, Meta(gt=0)] = 600.0  # seconds a finished job's result stays readable
    # Bytes the daemon may hold for jobs: queued and running requests, the compile
    # cache (sandboxd/engine/budget.py; results live in the job store).  Beyond it new jobs get
    # queue_full (429).  0: a quarter of the host's memory, 256 MiB to 8 GiB.
    memory_budget: Annotated[int, Meta(ge=0)] = 0
    # The durable job store (SQLite): accepted jobs and their results survive a
    # restart.  "" = STATE_DIR/jobs/INSTANCE.sqlite3 (one file per instance).
    job_store: str = ""
    # Bytes of specs and results the job store keeps (sandboxd/jobs/store.py): past it
    # the oldest results are evicted, then new jobs get queue_full (429).
    # 0: a tenth of the store's filesystem, 256 MiB to 16 GiB.
    job_store_max_bytes: Annotated[int, Meta(ge=0)] = 0
    # Result callbacks (HTTP ?callback_url=) to loopback/private/link-local
    # addresses are refused unless this is true (SSRF, CVE-2024-29021).
    callback_allow_private: bool = False
    drain_timeout: Annotated[float, Meta(ge=0)] = 30.0  # SIGTERM: seconds running jobs get to finish
    # Run every language's self-test at start-up; serve only those that pass.
    selftest: bool = True
    # Judge0 CE and Piston v2 compatible APIs on the HTTP listener, under these
    # path prefixes (sandboxd/compat); "" disables one.
    judge0_prefix: Annotated[str, Meta(pattern=r"^(/[A-Za-z0-9._~-]+)*$")] = "/judge0"
    piston_prefix: Annotated[str, Meta(pattern=r"^(/[A-Za-z0-9._~-]+)*$")] = "/piston"
    # ...and/or at the root of listeners of their own, "host:port" (Judge0's
    # port is 2358, Piston's 2000), for clients that cannot take a path in
    # their base URL; "" = none.  The http_token rule applies to each.
    judge0_http: str = ""
    piston_http: str = ""
    # --- fleet (sandboxd/fleet): Redis URL, e.g. "redis://10.0.0.5:6379/0".
    # `serve` joins the fleet (claims jobs while it has free boxes) when set;
    # `coordinator` requires it.
    fleet: str = ""
    fleet_prefix: Annotated[str, Meta(pattern=r"^[A-Za-z0-9._-]{1,64}$")] = "sandboxd"  # several fleets per Redis
    fleet_host_id: str = ""  # "" = the hostname (plus "/instance" for a non-default instance)
    fleet_tags: list[HostTag] = msgspec.field(default_factory=list)  # jobs may require one (host_tag)
    fleet_only_tagged: bool = False  # reserved host: take only jobs that require one of fleet_tags
    fleet_lease: Annotated[float, Meta(ge=1)] = 10.0  # seconds a claimed job stays with a silent host
    fleet_heartbeat: Annotated[float, Meta(gt=0)] = 1.0  # seconds between a host's lease renewals
    fleet_max_attempts: Annotated[int, Meta(ge=1)] = 3  # hosts lost running one job before it fails
    fleet_queue_depth: Annotated[int, Meta(ge=1)] = 100_000  # waiting jobs per fleet queue; beyond: 429
    languages_dir: str = ""  # "" = the packaged language files
    log_format: Literal["text", "json"] = "text"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    state_dir: str = "/var/lib/sandboxd"
    run_dir: str = "/run/sandboxd"
    # `serve` writes its pid here once its socket is bound, and removes it on exit; "" = run_dir/sandboxd.pid.
    pid_file: str = ""


FIELDS = Config.__struct_fields__


# SANDBOXD_* variables that are not daemon settings: the client's (`sandboxd
# submit`), scripts/start.sh's, the test harness's and internal ones.  The
# daemon ignores them; any other SANDBOXD_<KEY> must name a setting.
RESERVED_ENV = ("SANDBOXD_ADDRESS", "SANDBOXD_TOKEN", "SANDBOXD_LOG", "SANDBOXD_IN_SCOPE", "SANDBOXD_CGROUP_DELEGATED")
RESERVED_ENV_PREFIXES = ("SANDBOXD_CLIENT_", "SANDBOXD_SCRIPT_", "SANDBOXD_VM_", "SANDBOXD_TEST_")


def env_setting(key: str) -> str | None:
    """The setting an environment variable sets, None if it is not one of ours;
    raises ConfigError for a SANDBOXD_ name that is neither (a typo)."""
    if not key.startswith("SANDBOXD_") or key in RESERVED_ENV or key.startswith(RESERVED_ENV_PREFIXES):
        return None
    name = key.removeprefix("SANDBOXD_").lower()
    if name not in FIELDS:
        raise ConfigError(f"{key}: unknown setting {name!r} (see `sandboxd config --defaults`)")
    return name


def _coerce_env(raw: str) -> Any:
    # Env values are strings; let msgspec convert them with the field's type.
    try:
        return msgspec.json.decode(raw)
    except msgspec.DecodeError:
        return raw


def load(
    path: Path | None = None,
    overrides: dict[str, Any] | None = None,
    env: dict[str, str] | None = None,
    defaults: dict[str, Any] | None = None,
    default_path: Path = DEFAULT_PATH,
) -> Config:
    """`defaults` replace Config's own defaults (the coordinator listens elsewhere)."""
    data: dict[str, Any] = dict(defaults or {})
    p = path if path is not None else default_path
    if p.exists() or path is not None:
        try:
            data.update(tomllib.loads(p.read_text()))
        except FileNotFoundError:
            raise ConfigError(f"{p}: no such file") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{p}: {e}") from None
    for key, raw in (env if env is not None else os.environ).items():
        name = env_setting(key)
        if name is not None:
            data[name] = raw if isinstance(getattr(Config, name, None), str) else _coerce_env(raw)
    data.update({k: v for k, v in (overrides or {}).items() if v is not None})
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


def check(cfg: Config) -> None:
    seen: dict[str, str] = {}
    for key in ("http", "judge0_http", "piston_http"):
        addr = getattr(cfg, key)
        if not addr:
            continue
        if addr in seen:
            raise ConfigError(f"{key}: {addr!r} is already {seen[addr]}'s address")
        seen[addr] = key
        host, _, port = addr.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(f"{key}: {addr!r} is not host:port")
        if not http_is_loopback(addr) and not cfg.http_token:
            raise ConfigError(f"http_token: required when {key} listens beyond loopback (who can connect can run code)")
    budget = cfg.memory_budget or default_memory_budget()
    if budget < cfg.max_body:  # a request within max_body must be admissible
        raise ConfigError(f"memory_budget: {budget} bytes is less than max_body ({cfg.max_body}); raise it")
    if not cfg.socket and not cfg.http:
        raise ConfigError("socket, http: at least one must be enabled")
    if cfg.fleet:
        if not cfg.fleet.startswith(("redis://", "rediss://", "unix://")):
            raise ConfigError(f"fleet: {cfg.fleet!r} is not a redis://, rediss:// or unix:// URL")
        if cfg.fleet_heartbeat * 3 > cfg.fleet_lease:
            raise ConfigError("fleet_heartbeat: must be at most a third of fleet_lease, or leases expire between beats")


def defaults_toml() -> str:
    out = []
    for name, value in msgspec.to_builtins(Config()).items():
        out.append(f"{name} = {msgspec.json.encode(value).decode() if not isinstance(value, dict) else '{}'}")
    return "\n".join(out) + "\n"
