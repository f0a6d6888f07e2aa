"""Flat names of the settings: the keys from before sections existed.

Each setting keeps one flat name.  It is its environment variable
(SANDBOXD_<FLAT>: variables have no sections), the key `serve`'s flags
override, and, at the top of a TOML file, a deprecated spelling that still
works and logs where the setting lives now (existing files and ansible
inventories keep working; ansible/roles/sandboxd/vars/flat_keys.yml is this
table for the role, kept equal by tests/app/test_ansible_files.py).
"""

from __future__ import annotations

import logging
from typing import Any

import msgspec

from sandboxd.config.sections import SECTIONS, Config, ConfigError

log = logging.getLogger("sandboxd.config")

# A section's keys were "<prefix><key>" ...
_PREFIX = {
    "log": "log_",
    "socket": "socket_",
    "http": "http_",
    "engine": "",
    "jobs": "",
    "fleet": "fleet_",
    "sessions": "session_",
    "files": "files_",
    "tenants": "tenants_",
}
# ...except these (a section's main setting was the section's name).
_EXCEPT = {
    "socket.path": "socket",
    "http.listen": "http",
    "fleet.url": "fleet",
    "http.judge0_listen": "judge0_http",
    "http.piston_listen": "piston_http",
    "jobs.store": "job_store",
    "jobs.store_max_bytes": "job_store_max_bytes",
    **{f"http.{k}": k for k in ("max_connections", "max_connections_per_listener", "max_receiving_bytes")},
    **{f"http.{k}": k for k in ("max_body", "judge0_prefix", "piston_prefix")},
}


def _table() -> dict[str, tuple[str, str]]:
    out: dict[str, tuple[str, str]] = {}
    leaves = 0
    for f in msgspec.structs.fields(Config):
        if f.name in SECTIONS and f.name not in _PREFIX:
            continue  # a section born nested ([tenants]) has no flat names
        keys = SECTIONS[f.name].__struct_fields__ if f.name in SECTIONS else ("",)
        for key in keys:
            leaves += 1
            place = f"{f.name}.{key}"
            flat = _EXCEPT.get(place, _PREFIX[f.name] + key) if key else f.name
            out[flat] = (f.name, key) if key else ("", f.name)
    assert len(out) == leaves, "two settings share a flat name"
    return out


# Flat name -> (section or "" for a top-level key, key).
FLAT: dict[str, tuple[str, str]] = _table()
PLACE: dict[tuple[str, str], str] = {v: k for k, v in FLAT.items()}  # and back


def put(data: dict[str, Any], flat: str, value: Any) -> None:
    """Set the setting `flat` names in nested `data`."""
    section, key = FLAT[flat]
    if section:
        data.setdefault(section, {})[key] = value
    else:
        data[key] = value


def _is_flat(key: str, value: Any) -> bool:
    # "http" is both a flat key (a string) and a section (a table).
    return bool(FLAT.get(key, ("", ""))[0]) and not (key in SECTIONS and isinstance(value, dict))


def nest(data: dict[str, Any], where: str) -> dict[str, Any]:
    """A file's keys with the flat ones moved into their sections, each move
    logged as deprecated; a setting given both ways is an error."""
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in data.items() if not _is_flat(k, v)}
    for flat, value in data.items():
        if not _is_flat(flat, value):
            continue
        section, key = FLAT[flat]
        into = out.setdefault(section, {})
        if not isinstance(into, dict):
            continue  # `engine = 5`: left for the type check to name
        if key in into:
            raise ConfigError(f"{where}: {flat} and {section}.{key} are the same setting; keep {section}.{key}")
        into[key] = value
        log.warning("%s: `%s` is deprecated: set `%s` under [%s] (still read for now)", where, flat, key, section)
    return out


def get(cfg: Config, flat: str) -> Any:
    """The value of a setting by its flat name."""
    section, key = FLAT[flat]
    return getattr(getattr(cfg, section) if section else cfg, key)
