"""Compiling, as data: a language's compile request, its artifacts as the
files of the runs that follow, the compile cache's key, and the rules that
turn a run's raw status into the language's (a missing artifact, the
runtime's own out-of-memory error).  The engine runs the requests."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import msgspec

from sandboxd.engine import javaclass
from sandboxd.languages import Language
from sandboxd.schema import FileIn, Limits, RunRequest, RunResult


@dataclass
class Compiled:
    lang: Language
    result: RunResult | None  # None: nothing to compile (interpreted language)
    files: list[FileIn]  # what each run gets: artifacts, or the sources themselves

    @property
    def ok(self) -> bool:
        return self.result is None or self.result.status == "ok"


def cache_key(lang_id: str, sources: list[FileIn], options: list[str], limits: Limits | None) -> bytes:
    """Identical compiles, identical key: everything the compile's result depends on."""
    return hashlib.sha256(msgspec.msgpack.encode([lang_id, sources, options, limits])).digest()


def sources_of(lang: Language, source: bytes, files: list[FileIn] | tuple[FileIn, ...]) -> list[FileIn]:
    """The compile's files: the source under the name the language gives it, then the others."""
    name = javaclass.entry(source, lang.source).file if lang.entry_class == "java" else lang.source
    return [FileIn(name, source), *files]


def compile_request(lang: Language, sources: list[FileIn], options: list[str], limits: Limits | None) -> RunRequest:
    assert lang.compile is not None  # an interpreted language has no compile run
    env = lang.env
    if lang.entry_class == "java":
        # An environment variable, not text in the script: the name comes from the source.
        entry = javaclass.entry(sources[0].content, lang.source)
        env = {**(env or {}), "SANDBOXD_SOURCE": entry.file, "SANDBOXD_MAIN_CLASS": entry.main_class}
    return RunRequest(
        cmd=lang.compile + options,
        env=env,
        files_in=sources,
        files_out=lang.artifacts,
        limits=lang.fit(limits) if limits else lang.compile_limits,
    )


def compiled_from(lang: Language, res: RunResult) -> Compiled:
    """The compile run's artifacts become the runs' files (taken out of the result)."""
    missing = [f.path for f in res.files if f.content is None]
    if res.status == "ok" and missing:
        res.status, res.message = "nonzero_exit", f"the compiler did not produce {', '.join(missing)}"
    artifacts = [FileIn(f.path, f.content or b"", executable=True) for f in res.files]
    res.files = []
    return Compiled(lang, res, artifacts)


def run_request(
    comp: Compiled,
    stdin: bytes,
    limits: Limits | None,
    files_in: list[FileIn] | tuple[FileIn, ...],
    files_out: list[str] | None,
    args: list[str] | tuple[str, ...],
) -> RunRequest:
    lang = comp.lang
    lim = lang.fit(limits or lang.default_limits)
    return RunRequest(
        cmd=lang.run_argv(lim.memory) + list(args),
        env=lang.env,
        stdin=stdin,
        files_in=[*comp.files, *files_in],
        files_out=files_out or [],
        limits=lim,
    )


def runtime_memory_error(lang: Language, res: RunResult) -> None:
    """The runtime's own heap ceiling (sized from the limit) was hit first: a memory limit."""
    if res.status in ("nonzero_exit", "signaled") and lang.memory_errors and lang.memory_error(res.stderr):
        res.status, res.message = "memory_limit", f"{lang.name} ran out of memory"
