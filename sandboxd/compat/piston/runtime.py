"""The runtimes Piston lists (our languages under Piston's names) and finding one
by language or alias and version selector."""

from __future__ import annotations

import msgspec

from sandboxd.compat import Served
from sandboxd.compat.piston.semver import parse, satisfies
from sandboxd.languages import Language

# Our language -> (Piston language name, aliases, runtime).  Others: their own id.
RUNTIMES: dict[str, tuple[str, list[str], str | None]] = {
    "bash": ("bash", ["sh"], None),
    "c": ("c", ["gcc"], "gcc"),
    "cpp": ("c++", ["cpp", "g++"], "gcc"),
    "cpp20": ("c++20", ["cpp20", "g++20"], "gcc"),
    "go": ("go", ["go", "golang"], None),
    "java": ("java", [], None),
    "javascript": ("javascript", ["node-javascript", "node-js", "javascript", "js"], "node"),
    "python3": ("python", ["py", "py3", "python3"], None),
    "rust": ("rust", ["rs"], None),
}


class Runtime(msgspec.Struct):
    lang: Language
    language: str
    version: str
    aliases: list[str]
    runtime: str | None


def runtimes(served: dict[str, Served]) -> list[Runtime]:
    out = []
    for lid, s in sorted(served.items()):
        name, aliases, rt = RUNTIMES.get(lid, (lid, [], None))
        if lid != name and lid not in aliases:
            aliases = [*aliases, lid]
        out.append(Runtime(s.lang, name, s.version if parse(s.version) else "0.0.0", aliases, rt))
    return out


def find_runtime(served: dict[str, Served], language: str, version: str) -> Runtime | None:
    """runtime.get_latest_runtime_matching_language_version."""
    found = [
        rt
        for rt in runtimes(served)
        if (rt.language == language or language in rt.aliases) and satisfies(rt.version, version)
    ]
    return max(found, key=lambda rt: parse(rt.version) or (0, 0, 0), default=None)
