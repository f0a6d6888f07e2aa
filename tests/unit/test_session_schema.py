"""The live session's messages (sandboxd.sessionschema SessionStart & co.): what is
refused names the field."""

from __future__ import annotations

import pytest

from sandboxd.schema import SchemaError
from sandboxd.sessionschema import SessionEof, SessionKill, SessionSignal, SessionStart, decode_session_message


def test_messages_decode_by_type() -> None:
    start = decode_session_message('{"type": "start", "language": "c", "source": "x", "argv": ["a"]}')
    assert isinstance(start, SessionStart) and start.argv == ["a"] and start.compile is None
    assert isinstance(decode_session_message('{"type": "eof"}'), SessionEof)
    assert isinstance(decode_session_message('{"type": "kill"}'), SessionKill)
    sig = decode_session_message('{"type": "signal", "signal": "INT"}')
    assert isinstance(sig, SessionSignal) and sig.signal == "INT"


@pytest.mark.parametrize(
    ("msg", "names"),
    [
        ('{"type": "signal", "signal": "STOP"}', "$.signal"),
        ('{"type": "start", "language": "c", "source": "x", "limits": {"memory": 1}}', "$.limits.memory"),
        ('{"type": "start", "source": "x"}', "language"),
        ('{"type": "start", "language": "c"}', "source"),
        ('{"type": "start", "language": "c", "source": "x", "argv": ["a\\u0000"]}', "argv[0]"),
        ('{"type": "start", "language": "c", "files": [{"path": "../x"}]}', "files[0].path"),
        ('{"type": "start", "language": "c", "source": "x", "idle_timeout": 0}', "$.idle_timeout"),
        ('{"type": "launch"}', "type"),
        ("not json", "malformed"),
    ],
)
def test_refusals_name_the_field(msg: str, names: str) -> None:
    with pytest.raises(SchemaError, match=names.replace("$", r"\$").replace("[", r"\[").replace("]", r"\]")):
        decode_session_message(msg)
