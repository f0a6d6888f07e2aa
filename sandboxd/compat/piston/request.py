"""An execute request, validated as Piston's api/src/api/v2.js does (its messages,
in its order), into the job's spec."""

from __future__ import annotations

from typing import Any

import msgspec

from sandboxd.api.inbound import offload
from sandboxd.compat import Backend
from sandboxd.compat.piston.constraints import limits
from sandboxd.compat.piston.errors import PistonError
from sandboxd.compat.piston.files import files_of
from sandboxd.compat.piston.runtime import find_runtime
from sandboxd.schema import FileIn, Limits


class Job(msgspec.Struct, tag="piston", tag_field="api"):
    """A validated execute request: the job's spec."""

    lang: str
    language: str  # the runtime as the response names it
    version: str
    entry: FileIn
    others: list[FileIn]
    stdin: bytes
    args: list[str]
    run_limits: Limits
    compile_limits: Limits | None = None  # None: the language's own


async def build(backend: Backend, body: dict[str, Any]) -> Job:
    """The job of an execute request's body; PistonError(400) as Piston answers."""
    language, version, files = _required(body)
    rt = find_runtime(await backend.compat_languages(), language, version)
    if rt is None:
        raise PistonError(400, f"{language}-{version} runtime is unknown")
    if not any(not f.get("encoding") or f.get("encoding") == "utf8" for f in files):
        raise PistonError(400, "files must include at least one utf8 encoded file")
    comp_limits, run_limits = limits(rt.lang, body)
    args = body.get("args") or []
    if not isinstance(args, list):
        raise PistonError(400, "args must be an array")
    stdin = body.get("stdin")
    stdin = "" if stdin is None else stdin if isinstance(stdin, str) else str(stdin)
    if not stdin.endswith("\n"):
        stdin += "\n"  # Piston adds a trailing newline
    entry, others = await offload(sum(len(f["content"]) for f in files), files_of, rt.lang, files)
    return Job(
        rt.lang.id,
        rt.language,
        rt.version,
        entry,
        others,
        stdin.encode(),
        [a if isinstance(a, str) else str(a) for a in args],
        run_limits,
        comp_limits,
    )


def _required(body: dict[str, Any]) -> tuple[str, str, list[dict[str, Any]]]:
    """(language, version, files): the fields every request must have, of their types."""
    language, version, files = body.get("language"), body.get("version"), body.get("files")
    if not language or not isinstance(language, str):
        raise PistonError(400, "language is required as a string")
    if not version or not isinstance(version, str):
        raise PistonError(400, "version is required as a string")
    if not isinstance(files, list):
        raise PistonError(400, "files is required as an array")
    for i, f in enumerate(files):
        if not isinstance(f, dict) or not isinstance(f.get("content"), str):
            raise PistonError(400, f"files[{i}].content is required as a string")
    return language, version, files
