"""Judge0's submission serializer: the requested attributes, in its order, each
read from the submission (the job's spec) or its outcome (the job's result)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sandboxd.compat.archive import encode64
from sandboxd.compat.judge0.casts import decimal, seconds, timestamp
from sandboxd.compat.judge0.request import Request
from sandboxd.compat.judge0.status import Outcome, outcome
from sandboxd.compat.judge0.tables import ATTRIBUTES, STATUSES, TEXT_FIELDS
from sandboxd.schema import JobInfo


@dataclass(frozen=True)
class Record:
    """One submission as the serializer sees it."""

    token: str
    req: Request
    info: JobInfo
    o: Outcome


def view(token: str, req: Request, info: JobInfo, fields: tuple[str, ...], b64: bool) -> dict[str, Any]:
    """The serializer: requested attributes in its order.  Raises UnicodeDecodeError
    for text that is not UTF-8 when base64_encoded is false (Judge0's 400)."""
    rec = Record(token, req, info, outcome(req, info))
    want = set(fields)
    return {name: _attr(rec, name, b64) for name in ATTRIBUTES if name in want}


def _attr(rec: Record, name: str, b64: bool) -> Any:
    if name in TEXT_FIELDS:
        return _text(rec, name, b64)
    derived = _DERIVED.get(name)
    return derived(rec) if derived is not None else getattr(rec.req, name)


def _text(rec: Record, name: str, b64: bool) -> str | None:
    """A text column: the submission's own or the outcome's, as UTF-8 or Ruby's base64."""
    v: bytes | None
    if name in ("source_code", "stdin", "expected_output"):
        v = getattr(rec.req, name)
    elif name == "message":
        v = None if rec.o.message is None else rec.o.message.encode()
    else:
        v = getattr(rec.o, name)
    if v is None:
        return None
    return encode64(v) if b64 else v.decode("utf-8")


def _limit(name: str) -> Callable[[Record], Any]:
    return lambda rec: decimal(getattr(rec.req, name))


# Attributes that are not the spec's field of the same name, as it is.
_DERIVED: dict[str, Callable[[Record], Any]] = {
    "status_id": lambda rec: rec.o.status_id,
    "status": lambda rec: {"id": rec.o.status_id, "description": STATUSES[rec.o.status_id]},
    "language": lambda rec: {"id": rec.req.language_id, "name": rec.req.language_name},
    "created_at": lambda rec: timestamp(rec.info.created_at),
    "finished_at": lambda rec: None if rec.o.pending else timestamp(rec.info.finished_at),
    "time": lambda rec: seconds(rec.o.time),
    "wall_time": lambda rec: seconds(rec.o.wall_time),
    "memory": lambda rec: rec.o.memory,
    "token": lambda rec: rec.token,
    "exit_code": lambda rec: rec.o.exit_code,
    "exit_signal": lambda rec: rec.o.exit_signal,
    "cpu_time_limit": _limit("cpu_time_limit"),
    "cpu_extra_time": _limit("cpu_extra_time"),
    "wall_time_limit": _limit("wall_time_limit"),
    "additional_files": lambda rec: None if rec.req.additional_files is None else encode64(rec.req.additional_files),
}
