"""Ruby and Rails as Judge0 casts and prints values, pure."""

from __future__ import annotations

import base64

import msgspec
import pytest

from sandboxd.compat import judge0 as j0mod
from sandboxd.compat.judge0.casts import boolean, int_cast, number, ruby_num, seconds, timestamp, words


def test_encodings_helpers() -> None:
    assert (
        j0mod.encode64(b"x" * 50)
        == base64.b64encode(b"x" * 50).decode()[:60] + "\n" + base64.b64encode(b"x" * 50).decode()[60:] + "\n"
    )
    assert j0mod.decode64("aGkK") == b"hi\n" and j0mod.decode64("aG!k\nK") == b"hi\n" and j0mod.decode64("aGk") == b"hi"
    assert j0mod.decimal(5) == "5.0" and j0mod.decimal(0.016) == "0.016" and j0mod.decimal(None) is None
    assert msgspec.json.decode(msgspec.json.encode(j0mod.CONFIG)) == j0mod.CONFIG


def test_timestamps_are_utc_with_milliseconds() -> None:
    assert timestamp(0.0) == "1970-01-01T00:00:00.000Z"
    assert timestamp(1700000000.2569) == "2023-11-14T22:13:20.256Z"
    assert timestamp(None) is None


@pytest.mark.parametrize(
    ("raw", "want"),
    [
        (None, (None, False)),
        ("", (None, False)),
        ("  ", (None, False)),
        (False, (None, False)),
        (True, (None, True)),
        (3, (3.0, False)),
        (" 2.5 ", (2.5, False)),
        ("1e3", (1000.0, False)),
        ("abc", (None, True)),
        (float("nan"), (None, True)),
        ("inf", (None, True)),
        ([1], (None, True)),
    ],
)
def test_numericality(raw: object, want: tuple[float | None, bool]) -> None:
    assert number(raw) == want


def test_integer_and_boolean_casts() -> None:
    assert [int_cast(v) for v in (71, "71", " 71.9 ", 71.9, True, None, "x", float("inf"), [71])] == [
        71, 71, 71, 71, None, None, None, None, None,
    ]  # fmt: skip
    assert [boolean(v, True) for v in (None, "", "0", "f", "off", "FALSE", 0, 0.0)] == [True, True] + [False] * 6
    assert [boolean(v, False) for v in ("1", "true", "yes", "anything", 2, True)] == [True] * 6
    assert ruby_num(0) == "0" and ruby_num(15.0) == "15.0"


def test_words_split_as_bash_without_the_unsafe_characters() -> None:
    assert words("a 'b c' x;y $HOME `id` a|b") == ["a", "b c", "xy", "HOME", "id", "ab"]
    assert words(None) == [] and words("") == []
    with pytest.raises(ValueError, match="No closing quotation"):
        words("'unclosed")


def test_measured_times_have_judge0s_milliseconds() -> None:
    # (before: "0.012345", six decimals; Judge0 stores isolate's milliseconds, truncated)
    assert seconds(0.0123456) == "0.012" and seconds(0.0109) == "0.01" and seconds(0.016) == "0.016"
    assert seconds(0.0004) == "0.0" and seconds(0.0) == "0.0" and seconds(2.5) == "2.5" and seconds(None) is None
    assert seconds(1.9999999) == "1.999"
