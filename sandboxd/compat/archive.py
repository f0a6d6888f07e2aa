"""Judge0's encodings and `additional_files` zips, decoded without trusting them.

Both run on request bodies of up to `max_body` bytes, so both are linear and
bounded before they start: base64 through C (bytes.translate, binascii), and a
zip's entry count read from its end-of-central-directory record (zip64 too)
and its central directory walked record by record, stopping at the limit,
before zipfile parses a byte of it (a million records froze the event loop
for 8-19 s and took 1.2 GB).  Callers run them off the event loop
(sandboxd.offload) when the input is large.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import io
import stat
import struct
import zipfile

from sandboxd.schema import FileIn, SchemaError, check_box_path

KiB = 1024
MAX_EXTRACT_FILES = 1000  # entries of an additional_files zip (directories included)

_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_NOT_B64 = bytes(sorted(set(range(256)) - set(_ALPHABET)))


def encode64(data: bytes) -> str:
    """Ruby's Base64.encode64: lines of 60 characters, each ending in a newline."""
    s = base64.b64encode(data).decode()
    return "".join(s[i : i + 60] + "\n" for i in range(0, len(s), 60))


# Characters per C call: each takes about a millisecond, so a decoding thread
# (sandboxd.api.inbound.offload) gives the event loop the GIL between calls.
_CHUNK = 1 << 20


def decode64(text: str) -> bytes:
    """Ruby's Base64.decode64: characters outside the alphabet are skipped, '=' ends
    the data, a partial last group still yields its bytes.  Never fails (as Judge0).

    A chunk at a time into one growing buffer: it holds the text, the result
    and one chunk, never the filtered text or the decoded chunks whole besides
    the result (a 60 MB text took 150 MB on top of itself; now its 45 MB)."""
    end = text.find("=")
    end = len(text) if end < 0 else end
    out = io.BytesIO()  # (grown in place, and getvalue() hands over its buffer: no copy of the result)
    rest = b""  # (a group of 4 split between chunks)
    for i in range(0, end, _CHUNK):
        # Non-ASCII characters are outside the alphabet: 'ignore' drops them.
        chars = rest + text[i : min(i + _CHUNK, end)].encode("ascii", "ignore").translate(None, _NOT_B64)
        whole = len(chars) - len(chars) % 4
        out.write(binascii.a2b_base64(chars[:whole]))
        rest = chars[whole:]
    if len(rest) >= 2:
        with contextlib.suppress(binascii.Error):
            out.write(binascii.a2b_base64(rest + b"=" * (4 - len(rest))))
    return out.getvalue()


_EOCD = struct.Struct("<4sHHHHIIH")  # end of central directory, 22 bytes
_LOC64 = struct.Struct("<4sIQI")  # zip64 EOCD locator, 20 bytes, right before the EOCD
_EOCD64 = struct.Struct("<4sQHHIIQQQQ")  # zip64 EOCD, 56 bytes, right before its locator
_CDR_LENGTHS = struct.Struct("<HHH")  # name, extra, comment lengths at offset 28 of a record
_CDR_SIZE = 46
BAD_ZIP = "is not a valid zip archive"


def check_entries(data: bytes, limit: int = MAX_EXTRACT_FILES) -> int:
    """The number of central-directory records, refusing more than `limit` with
    reading at most limit+1 of them.  The count in the EOCD record is checked
    first, then the records themselves, where zipfile will look for them (the
    count can lie; zipfile reads as many records as fit in the directory's size)."""
    eocd = data.rfind(b"PK\x05\x06", max(0, len(data) - (_EOCD.size + 0xFFFF)))
    if eocd < 0 or len(data) - eocd < _EOCD.size:
        raise SchemaError(BAD_ZIP)
    _, _, _, _, count, size, _, _ = _EOCD.unpack_from(data, eocd)
    loc = eocd - _LOC64.size
    if loc >= 0 and data[loc : loc + 4] == b"PK\x06\x07":
        eocd = loc - _EOCD64.size
        if eocd < 0 or data[eocd : eocd + 4] != b"PK\x06\x06":
            raise SchemaError(BAD_ZIP)
        _, _, _, _, _, _, _, count, size, _ = _EOCD64.unpack_from(data, eocd)
    if count > limit:
        raise SchemaError(f"has {count} entries, more than {limit}")
    pos, n = eocd - size, 0
    if pos < 0:
        raise SchemaError(BAD_ZIP)
    while pos < eocd:
        if n == limit:
            raise SchemaError(f"has more than {limit} entries")
        if data[pos : pos + 4] != b"PK\x01\x02" or pos + _CDR_SIZE > eocd:
            raise SchemaError(BAD_ZIP)
        name, extra, comment = _CDR_LENGTHS.unpack_from(data, pos + 28)
        pos += _CDR_SIZE + name + extra + comment
        n += 1
    return n


def _infos(data: bytes, max_bytes: int) -> tuple[zipfile.ZipFile, list[zipfile.ZipInfo]]:
    check_entries(data)
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
        infos = zf.infolist()
    except Exception:
        raise SchemaError(BAD_ZIP) from None
    # A bomb is refused by what it claims before anything is inflated; what it
    # really inflates to is counted while inflating (extract_zip).
    declared = sum(i.file_size for i in infos)
    if declared > max_bytes:
        raise SchemaError(f"declares {declared // KiB} KB uncompressed, more than {max_bytes // KiB} KB")
    return zf, infos


def _entry_path(info: zipfile.ZipInfo) -> str:
    # zipfile cuts a name at its first NUL, so "\0x" arrives as "": bad input, named.
    name = info.filename
    if not name:
        raise SchemaError("has an entry with an empty name (or one starting with NUL)")
    return check_box_path(name.rstrip("/") if name.endswith("/") else name, f"additional_files: {name!r}")


def extract_zip(data: bytes, max_bytes: int, source_name: str) -> list[FileIn]:
    """additional_files, unzipped on the host without trusting the archive.

    Refused: not a zip, absolute or climbing paths, names too long or empty,
    symlinks and other special entries, a file where another entry needs a
    directory, more than MAX_EXTRACT_FILES entries (before parsing), more than
    `max_bytes` uncompressed (declared, before inflating, and counted while
    inflating).  Like `unzip -n`, an existing file wins: the source file, then
    the first of duplicate entries."""
    zf, infos = _infos(data, max_bytes)
    files: dict[str, FileIn] = {}
    dirs: set[str] = set()
    total = 0
    for info in infos:
        path = _entry_path(info)
        if info.filename.endswith("/"):
            dirs.add(path)
            continue
        mode = info.external_attr >> 16
        if stat.S_IFMT(mode) not in (0, stat.S_IFREG):  # no type bits (as Python writes them): a file
            raise SchemaError(f"{info.filename!r} is not a regular file (symlinks and special files are refused)")
        if path == source_name or path in files:
            continue
        try:
            with zf.open(info) as f:
                content = f.read(max_bytes - total + 1)
        except Exception as e:
            raise SchemaError(f"{info.filename!r} cannot be extracted: {e}") from None
        total += len(content)
        if total > max_bytes:
            raise SchemaError(f"extracts to more than {max_bytes // KiB} KB")
        files[path] = FileIn(path, content, executable=bool(mode & 0o111))
    parents = {"/".join(p.split("/")[:i]) for p in files for i in range(1, p.count("/") + 1)} | {
        "/".join(d.split("/")[:i]) for d in dirs for i in range(1, d.count("/") + 2)
    }
    clash = sorted(parents & (set(files) | {source_name}))
    if clash:
        raise SchemaError(f"{clash[0]!r} is both a file and a directory")
    return list(files.values())
