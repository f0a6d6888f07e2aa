"""Languages as data: one TOML file each in sandboxd/data/languages/."""

from __future__ import annotations

import tomllib
from importlib import resources
from pathlib import Path

import msgspec

from .schema import Limits


class Language(msgspec.Struct, forbid_unknown_fields=True):
    id: str
    name: str
    source: str  # file name the source is saved as in /box
    run: list[str]
    compile: list[str] | None = None
    artifacts: list[str] = []  # files the compile step must produce, copied into the run
    env: dict[str, str] | None = None
    rootfs: str = "host"
    compile_limits: Limits = Limits(cpu_time=10.0, wall_time=20.0, memory=512 << 20, procs=32)


def load_dir(path: Path | None = None) -> dict[str, Language]:
    """Every *.toml of the directory (default: the packaged languages)."""
    files = (
        sorted(path.glob("*.toml"))
        if path is not None
        else sorted(
            (f for f in resources.files("sandboxd").joinpath("data/languages").iterdir() if f.name.endswith(".toml")),
            key=lambda f: f.name,
        )
    )
    out: dict[str, Language] = {}
    for f in files:
        try:
            lang = msgspec.convert(tomllib.loads(f.read_text()), Language)
        except (tomllib.TOMLDecodeError, msgspec.ValidationError) as e:
            raise ValueError(f"language file {f.name}: {e}") from None
        if f.name != f"{lang.id}.toml":
            raise ValueError(f"language file {f.name}: id {lang.id!r} must match the file name")
        out[lang.id] = lang
    return out
