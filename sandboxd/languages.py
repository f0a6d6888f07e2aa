"""Languages as data: one TOML file each in sandboxd/data/languages/ (or a configured dir).

Adding a language is adding a file (and, for a built rootfs, a recipe in rootfs/).
"""

from __future__ import annotations

import re
import tomllib
from importlib import resources
from pathlib import Path
from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from sandboxd.schema import Limits, LimitsPatch, SchemaError


class Language(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    id: Annotated[str, Meta(pattern=r"^[a-z][a-z0-9_+-]*$")]
    name: str
    source: str  # file name the source is saved as in /box
    # argv of a run; {memory_mb} and {heap_mb} are replaced per run from its memory limit,
    # so managed runtimes size their heap to the cgroup instead of to the host.
    run: list[str]
    compile: list[str] | None = None  # argv; a submission's compile_options are appended
    artifacts: list[str] = []  # files the compile step must produce, copied into each run
    env: dict[str, str] | None = None
    # Which rootfs recipe (rootfs/NAME.toml) the language runs on once built;
    # "" = its own id, "host" = always the host's /usr.  Until a tree is built
    # (`sandboxd rootfs build`), every language runs on the host's /usr.
    rootfs: str = ""
    compile_limits: Limits = Limits(cpu_time=10.0, wall_time=20.0, memory=512 << 20, procs=32)
    # Defaults for clients that give none (CLI, compatibility APIs).
    default_limits: Limits = Limits()
    # Refused above these (a submission asking more gets a clear error).
    max_limits: LimitsPatch = LimitsPatch(cpu_time=30.0, memory=2048 << 20, procs=256)
    # What the runtime itself needs: a run's limits are raised to at least these
    # (a JVM needs threads and file descriptors before the program starts).
    min_procs: int = 1
    min_open_files: int = 16
    heap_fraction: Annotated[float, Meta(gt=0, le=1)] = 0.8  # {heap_mb} = memory_mb x this
    # A failed run whose stderr matches is a memory_limit, not a crash
    # (java.lang.OutOfMemoryError, a V8 heap limit, Python's MemoryError).
    memory_errors: list[str] = []
    version: list[str] | None = None  # argv printing the version
    version_regex: str = r"(\d+(?:\.\d+)+)"
    selftest: str = ""  # a program that copies stdin to stdout
    # "java": the source is saved as its public class's file (javac wants
    # Foo.java for `public class Foo`) and the compile gets the class to run in
    # $SANDBOXD_MAIN_CLASS (sandboxd.engine.javaclass); "": always `source`.
    entry_class: Literal["", "java"] = ""

    def __post_init__(self) -> None:
        for p in self.memory_errors:
            re.compile(p)

    def run_argv(self, memory: int) -> list[str]:
        mb = memory >> 20
        heap = max(16, int(mb * self.heap_fraction))
        return [a.replace("{memory_mb}", str(mb)).replace("{heap_mb}", str(heap)) for a in self.run]

    def fit(self, limits: Limits) -> Limits:
        """Check limits against the maximums; raise the runtime's floors."""
        mx = self.max_limits
        for name in ("cpu_time", "wall_time", "memory", "procs", "output", "file_size"):
            cap = getattr(mx, name)
            got = getattr(limits, name)
            if cap is not None and got is not None and got > cap:
                raise SchemaError(f"limits.{name}: {got} is more than {cap}, the maximum for {self.id}")
        if limits.procs < self.min_procs or limits.open_files < self.min_open_files:
            limits = msgspec.structs.replace(
                limits, procs=max(limits.procs, self.min_procs), open_files=max(limits.open_files, self.min_open_files)
            )
        return limits

    def memory_error(self, stderr: bytes) -> bool:
        text = stderr[-65536:].decode(errors="replace")
        return any(re.search(p, text) for p in self.memory_errors)


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
        except (tomllib.TOMLDecodeError, msgspec.ValidationError, re.error) as e:
            raise ValueError(f"language file {f.name}: {e}") from None
        if f.name != f"{lang.id}.toml":
            raise ValueError(f"language file {f.name}: id {lang.id!r} must match the file name")
        out[lang.id] = lang
    return out
