"""additional_files zips read without trusting them (issue 13), pure: no daemon.

On 9a299e5 a zip's central directory was parsed whatever its entry count, and
a NUL or over-long entry name was an internal error; now the count is read from
the end-of-central-directory record before parsing, the walk stops at the limit,
and bad names are schema errors.
"""

from __future__ import annotations

import io
import struct
import zipfile

import pytest
from zips import nul_name_zip, zip_bytes

from sandboxd.compat.archive import MAX_EXTRACT_FILES, check_entries, extract_zip
from sandboxd.schema import SchemaError

# --- zips ---------------------------------------------------------------------


def _eocd(data: bytes) -> int:
    return data.rfind(b"PK\x05\x06")


def test_zip_entry_count_read_before_parsing() -> None:
    # The EOCD claims 1001 entries: refused from that record alone.
    data = bytearray(zip_bytes({"a": b"x"}))
    struct.pack_into("<HH", data, _eocd(data) + 8, MAX_EXTRACT_FILES + 1, MAX_EXTRACT_FILES + 1)
    with pytest.raises(SchemaError, match="1001 entries"):
        check_entries(bytes(data))


def test_zip_records_counted_only_up_to_the_limit() -> None:
    # 1001 real records, then a corrupt one: the walk stops at the limit, before
    # the corrupt record (main parsed all of them and said "not a valid zip").
    names = {f"f{i}": b"" for i in range(MAX_EXTRACT_FILES + 2)}
    data = bytearray(zip_bytes(names))
    eocd = _eocd(data)
    off = struct.unpack_from("<I", data, eocd + 16)[0]
    struct.pack_into("<HH", data, eocd + 8, 1, 1)  # the count lies
    last = data.rfind(b"PK\x01\x02", off, eocd)
    data[last : last + 4] = b"JUNK"
    with pytest.raises(SchemaError, match="more than 1000 entries"):
        extract_zip(bytes(data), 10 << 20, "main.c")


def test_zip64_entry_count_is_read() -> None:
    b = io.BytesIO()
    with zipfile.ZipFile(b, "w", allowZip64=True) as z:
        z.writestr("a", b"x")
    data = bytearray(b.getvalue())
    eocd = _eocd(data)
    # Rewrite as zip64: EOCD fields 0xFFFF, a zip64 EOCD + locator claiming 10**6 entries.
    _, _, _, _, _, size, off, _ = struct.unpack_from("<4sHHHHIIH", data, eocd)
    z64 = struct.pack("<4sQHHIIQQQQ", b"PK\x06\x06", 44, 45, 45, 0, 0, 10**6, 10**6, size, off)
    loc = struct.pack("<4sIQI", b"PK\x06\x07", 0, eocd, 1)
    end = struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, 0xFFFF, 0xFFFF, size, 0xFFFFFFFF, 0)
    with pytest.raises(SchemaError, match="1000000 entries"):
        check_entries(bytes(data[:eocd]) + z64 + loc + end)


def test_zip_bomb_refused_by_declared_size_before_inflating() -> None:
    data = zip_bytes({"bomb": b"\0" * (11 << 20)})
    with pytest.raises(SchemaError, match="declares"):
        extract_zip(data, 10 << 20, "main.c")


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (nul_name_zip(), "empty name"),
        (zip_bytes({"a" * 300: b"x"}), "component of 300 bytes"),
        (zip_bytes({"d/" + "é" * 200: b"x"}), "component of 400 bytes"),
    ],
)
def test_bad_zip_names_are_schema_errors(data: bytes, why: str) -> None:
    with pytest.raises(SchemaError, match=why):
        extract_zip(data, 10 << 20, "main.c")
