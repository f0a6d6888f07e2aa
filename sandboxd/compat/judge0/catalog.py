"""The languages Judge0 lists: which of ours each id serves, named as Judge0 names them."""

from __future__ import annotations

import shlex
from typing import Any

from sandboxd.compat import Backend, Served
from sandboxd.compat.judge0.tables import LANGUAGES


async def served(backend: Backend) -> dict[int, Served]:
    """Judge0 id -> the language serving it, for the languages the backend runs now."""
    ours = await backend.compat_languages()
    return {jid: ours[lid] for jid, (lid, *_) in LANGUAGES.items() if lid in ours}


def language_name(jid: int, version: str) -> str:
    _lid, name, tool, stood_for = LANGUAGES[jid]
    inner = " ".join(p for p in (tool, version) if p)
    if stood_for:
        inner = f"{inner}, in place of {stood_for}" if inner else f"in place of {stood_for}"
    return f"{name} ({inner})" if inner else name


def language_detail(jid: int, s: Served) -> dict[str, Any]:
    lang = s.lang
    return {
        "id": jid,
        "name": language_name(jid, s.version),
        "is_archived": False,
        "source_file": lang.source,
        "compile_cmd": f"{shlex.join(lang.compile)} %s" if lang.compile else None,
        "run_cmd": shlex.join(lang.run_argv(lang.default_limits.memory)),
    }
