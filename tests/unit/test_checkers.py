"""The built-in output checkers (sandboxd/judging/checkers.py) as functions:
verdict and the message naming the first difference.  (That the judge picks
them for a submission is tests/judging/test_judge.py's, on real boxes.)"""

from __future__ import annotations

import typing

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sandboxd.judging.checkers import BUILTIN, exact, floats, lines, tokens
from sandboxd.schema import Checker, CheckerKind

C = Checker()
PROPS = settings(max_examples=100, deadline=None, database=None)


def test_every_kind_but_custom_is_built_in() -> None:
    assert set(BUILTIN) == set(typing.get_args(CheckerKind)) - {"custom"}


def test_exact_names_the_first_differing_byte() -> None:
    assert exact(b"abc\n", b"abc\n", C) == (True, "")
    assert exact(b"abXd", b"abcd", C) == (False, "differs at byte 2: got 'Xd', expected 'cd'")
    assert exact(b"ab", b"abc", C) == (False, "differs at byte 2: got '', expected 'c'")  # a prefix
    ok, msg = exact(b"x" * 100, b"y" * 100, C)
    assert not ok and msg.endswith("'" + "y" * 40 + "...'")  # previews are cut


def test_tokens_ignore_whitespace_only() -> None:
    assert tokens(b" 1\t2\n\n3 ", b"1 2 3", C) == (True, "")
    assert tokens(b"1 2 4", b"1 2 3", C) == (False, "token 3: got '4', expected '3'")
    assert tokens(b"1 2", b"1 2 3", C) == (False, "got 2 tokens, expected 3")
    assert tokens(b"1 2 3", b"1 2", C) == (False, "got 3 tokens, expected 2")


def test_lines_ignore_trailing_blanks_and_blank_lines_at_the_end() -> None:
    assert lines(b"a b \t\r\nc\n\n\n", b"a b\nc", C) == (True, "")
    assert lines(b"a  b\n", b"a b\n", C) == (False, "line 1: got 'a  b', expected 'a b'")  # inner spaces count
    assert lines(b"\na\n", b"a\n", C)[0] is False  # so do leading blank lines
    assert lines(b"a\nb\n", b"a\n", C) == (False, "got 2 lines, expected 1")


@pytest.mark.parametrize(
    ("out", "ans", "ok"),
    [
        (b"1.0000005", b"1", True),  # within abs_tol 1e-6
        (b"1.000002", b"1", False),
        (b"1000000.5", b"1000000", True),  # within rel_tol 1e-6 of 1e6
        (b"1000002", b"1000000", False),
        (b"1e3 x", b"1000 x", True),  # a word is compared exactly
        (b"1 y", b"1 x", False),
        (b"nan", b"1", False),  # not a finite number
        (b"inf", b"inf", True),  # an expected non-finite token is a word: compared exactly
        (b"1 2", b"1", False),
    ],
)
def test_floats_tolerance(out: bytes, ans: bytes, ok: bool) -> None:
    assert floats(out, ans, C)[0] is ok


def test_floats_messages() -> None:
    assert floats(b"abc", b"2.5", C) == (False, "token 1: got 'abc', expected a number near 2.5")
    assert floats(b"3", b"2.5", Checker(abs_tol=0.1, rel_tol=0))[1] == "token 1: got 3, expected 2.5 within 0.1"


@PROPS
@given(st.binary(max_size=200))
def test_every_checker_accepts_the_answer_itself(ans: bytes) -> None:
    for check in BUILTIN.values():
        assert check(ans, ans, C) == (True, "")


@PROPS
@given(st.lists(st.binary(min_size=1, max_size=5).map(lambda b: b.replace(b" ", b"_")), max_size=8), st.data())
def test_tokens_accept_any_spacing(words: list[bytes], data: st.DataObject) -> None:
    words = [w for w in (b"".join(w.split()) for w in words) if w]
    gaps = [data.draw(st.sampled_from([b" ", b"\n", b"\t ", b"\r\n"])) for _ in words]
    out = b"".join(g + w for g, w in zip(gaps, words, strict=True))
    assert tokens(out, b" ".join(words), C) == (True, "")
