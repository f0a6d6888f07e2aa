"""A final JobInfo into the job store without a copy of its large bytes.

msgpack-encoding a JobInfo copies every byte of its result: a run's 64 MiB
of files out became 64 MiB more, built on the event loop and held beside the
result until the store had written it.  A large result is split instead: its
large bytes fields (a run's stdout, stderr and files' content, a
submission's runs and tests likewise) are taken out, the rest (the head:
those fields empty) is encoded, small, and the store writes the head and
then each piece straight from the result's own bytes objects
(sandboxd.jobs.store.Split, sandboxd.jobs.blobs).  The index says where
each piece goes back; reading, each piece is read into a bytes object of its
own and put back in place, so the decoded result is the only copy.
"""

from __future__ import annotations

from typing import Any

import msgspec

from sandboxd.jobs.store import Split
from sandboxd.schema import JobInfo

# bytes fields from this size are pieces of their own (a smaller field costs
# less in the head than its entry in the index); results below it in all are not split.
SPLIT_FROM = 64 << 10
Step = str | int  # a field name, or an index in a list
_enc = msgspec.msgpack.Encoder()
_info = msgspec.msgpack.Decoder(JobInfo)
_index = msgspec.msgpack.Decoder(list[list[Step]])


def encode(info: JobInfo, size: int) -> bytes | Split:
    """What the store keeps of `info`; size: its result's bytes (nbytes), to
    leave a small one to one encode (the common case: no walk)."""
    if size < SPLIT_FROM:
        return _enc.encode(info)
    paths: list[list[Step]] = []
    pieces: list[bytes] = []
    head = _strip(info, [], paths, pieces)
    if not pieces:
        return _enc.encode(info)
    return Split(_enc.encode(head), _enc.encode(paths), pieces)


def decode(data: bytes | Split) -> JobInfo:
    if isinstance(data, bytes):
        return _info.decode(data)
    info = _info.decode(data.head)
    for path, piece in zip(_index.decode(data.index), data.pieces, strict=True):
        _put(info, path, piece)
    return info


def _strip(obj: Any, path: list[Step], paths: list[list[Step]], pieces: list[bytes]) -> Any:
    """obj with its large bytes (their paths and values appended) emptied: a
    changed copy of each struct and list on the way, the rest shared."""
    if isinstance(obj, msgspec.Struct):
        changes = {}
        for f in obj.__struct_fields__:
            v = getattr(obj, f)
            new = _strip(v, [*path, f], paths, pieces)
            if new is not v:
                changes[f] = new
        return msgspec.structs.replace(obj, **changes) if changes else obj
    if isinstance(obj, list):
        items = [_strip(v, [*path, i], paths, pieces) for i, v in enumerate(obj)]
        return items if any(a is not b for a, b in zip(items, obj, strict=True)) else obj
    if isinstance(obj, bytes) and len(obj) >= SPLIT_FROM:
        paths.append(path)
        pieces.append(obj)
        return b""
    return obj


def _put(obj: Any, path: list[Step], piece: bytes) -> None:
    for step in path[:-1]:
        obj = obj[step] if isinstance(step, int) else getattr(obj, step)
    last = path[-1]
    if isinstance(last, int):
        obj[last] = piece
    else:
        setattr(obj, last, piece)
