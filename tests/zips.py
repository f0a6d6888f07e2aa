"""Zip archives the tests build (Judge0's additional_files, the archive checks): stdlib only,
so the unit suite and the daemon suites share them."""

from __future__ import annotations

import io
import zipfile


def zip_bytes(entries: dict[str, bytes]) -> bytes:
    """A stored (uncompressed) zip of name -> content."""
    b = io.BytesIO()
    with zipfile.ZipFile(b, "w") as z:
        for name, data in entries.items():
            z.writestr(name, data)
    return b.getvalue()


def nul_name_zip() -> bytes:
    """A zip whose one entry's name starts with NUL, in both its local and central headers."""
    data = bytearray(zip_bytes({"Xevil": b"x"}))
    for sig in (b"PK\x03\x04", b"PK\x01\x02"):
        i = data.find(sig)
        off = 30 if sig == b"PK\x03\x04" else 46
        data[i + off] = 0  # the name now starts with NUL
    return bytes(data)
