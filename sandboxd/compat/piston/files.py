"""An execute request's files: their encodings, and where each lands in the box."""

from __future__ import annotations

import posixpath
from typing import Any

from sandboxd.compat.archive import decode64
from sandboxd.compat.piston.errors import PistonError
from sandboxd.languages import Language
from sandboxd.schema import FileIn, SchemaError, check_box_path


def _hex(s: str) -> bytes:
    """Node's Buffer.from(s, 'hex'): pairs until the first that is not hex."""
    out = bytearray()
    for i in range(0, len(s) - 1, 2):
        try:
            out.append(int(s[i : i + 2], 16))
        except ValueError:
            break
    return bytes(out)


def content(f: dict[str, Any]) -> tuple[bytes, bool]:
    """(bytes, is utf8) of a file; an unknown encoding is utf8 (as Piston)."""
    enc = f.get("encoding")
    text: str = f["content"]
    if enc == "base64":
        return decode64(text.replace("-", "+").replace("_", "/")), False
    if enc == "hex":
        return _hex(text), False
    return text.encode(), True


def files_of(lang: Language, files: list[Any]) -> tuple[FileIn, list[FileIn]]:
    """(entry file saved as the language's source, the others by name).  The entry is
    the first utf8 file, as Piston runs code_files[0]."""
    entry: FileIn | None = None
    others: dict[str, FileIn] = {}
    for i, f in enumerate(files):
        data, utf8 = content(f)
        name = f.get("name") or f"file{i}.code"
        if not isinstance(name, str):
            name = str(name)
        if entry is None and utf8:
            entry = FileIn(lang.source, data)
            continue
        path = _path(lang, i, name)
        others[path] = FileIn(path, data)  # a later file of the same name wins, as it overwrites
    assert entry is not None
    return entry, list(others.values())


def _path(lang: Language, i: int, name: str) -> str:
    """Where files[i] is saved in the box; PistonError for a name that cannot be."""
    rel = name.lstrip("/")  # path.join(submission_dir, name): absolute names land inside
    try:
        path = check_box_path(rel, f"files[{i}].name")
    except SchemaError as e:
        if ".." in posixpath.normpath(rel).split("/"):
            raise PistonError(400, f'File path "{name}" tries to escape parent directory: {rel}') from None
        raise PistonError(400, str(e)) from None  # empty, NUL, too long: named by the schema
    if path == lang.source:
        raise PistonError(400, f"files[{i}].name: {name!r} is where the entry file is saved for {lang.id}")
    return path
