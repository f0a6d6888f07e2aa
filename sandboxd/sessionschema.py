"""A live session's messages (docs/sessions.md): the start, and the controls a
client sends while its program runs.  Next to sandboxd.schema (whose run fields
a start reuses), shared by the daemon, the coordinator's proxy, Piston's
connect and the clients."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta, field

from sandboxd.schema import MAX_WALL_TIME, FileIn, Limits, MiB, SchemaError, check_files_in

# The signals a session's client may send: what a terminal sends, and KILL.
SessionSignalName = Literal["INT", "TERM", "HUP", "QUIT", "USR1", "USR2", "KILL"]
MAX_SESSION_ARGS = 256
MAX_SESSION_SOURCE = 16 * MiB


class SessionStart(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True, tag_field="type", tag="start"):
    """The first message of a live session: what to run (as a run's fields)."""

    language: str
    source: Annotated[str, Meta(max_length=MAX_SESSION_SOURCE)] | None = None  # the main file's text
    files: list[FileIn] = field(default_factory=list)  # more files, or the whole program without source
    argv: Annotated[list[str], Meta(max_length=MAX_SESSION_ARGS)] = field(default_factory=list)
    stdin: Annotated[str, Meta(max_length=MAX_SESSION_SOURCE)] = ""  # written first, before the client's frames
    limits: Limits | None = None  # None: the language's; wall_time is capped by the session's max length
    idle_timeout: Annotated[float, Meta(gt=0, le=MAX_WALL_TIME)] | None = None  # capped by the server's
    compile: bool | None = None  # None: when the language compiles
    token: str = ""  # for browsers, which cannot set an Authorization header on a WebSocket


class SessionEof(msgspec.Struct, forbid_unknown_fields=True, tag_field="type", tag="eof"):
    pass


class SessionSignal(msgspec.Struct, forbid_unknown_fields=True, tag_field="type", tag="signal"):
    signal: SessionSignalName


class SessionKill(msgspec.Struct, forbid_unknown_fields=True, tag_field="type", tag="kill"):
    pass


SessionControl = SessionEof | SessionSignal | SessionKill
SessionMessage = SessionStart | SessionControl
_SESSION_DECODER: msgspec.json.Decoder[SessionMessage] = msgspec.json.Decoder(SessionMessage)


def decode_session_message(data: str | bytes) -> SessionMessage:
    """One text message of a session's client; SchemaError names the bad field."""
    try:
        msg = _SESSION_DECODER.decode(data)
    except msgspec.ValidationError as e:
        raise SchemaError(str(e)) from None
    except (msgspec.DecodeError, UnicodeDecodeError) as e:
        raise SchemaError(f"malformed json: {e}") from None
    if isinstance(msg, SessionStart):
        validate_session(msg)
    return msg


def validate_session(start: SessionStart) -> SessionStart:
    for i, arg in enumerate(start.argv):
        if "\0" in arg:
            raise SchemaError(f"argv[{i}]: contains NUL")
    if start.source is None and not start.files:
        raise SchemaError("source: required (or files)")
    check_files_in(start.files, "files")
    return start
