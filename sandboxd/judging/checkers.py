"""Built-in output checkers: exact, tokens, lines, float.

Each returns (accepted, message); the message says where the first
difference is, which is what a contestant or a teacher wants to see.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from sandboxd.schema import Checker

Result = tuple[bool, str]


def _preview(b: bytes, n: int = 40) -> str:
    s = b[:n].decode("utf-8", errors="replace")
    return repr(s + ("..." if len(b) > n else ""))


def exact(out: bytes, ans: bytes, _c: Checker) -> Result:
    if out == ans:
        return True, ""
    i = next((k for k, (a, b) in enumerate(zip(out, ans, strict=False)) if a != b), min(len(out), len(ans)))
    return False, f"differs at byte {i}: got {_preview(out[i:])}, expected {_preview(ans[i:])}"


def tokens(out: bytes, ans: bytes, _c: Checker) -> Result:
    got, want = out.split(), ans.split()
    for i, (a, b) in enumerate(zip(got, want, strict=False)):
        if a != b:
            return False, f"token {i + 1}: got {_preview(a)}, expected {_preview(b)}"
    if len(got) != len(want):
        return False, f"got {len(got)} tokens, expected {len(want)}"
    return True, ""


def _lines(b: bytes) -> list[bytes]:
    lines = [line.rstrip(b" \t\r") for line in b.split(b"\n")]
    while lines and not lines[-1]:
        lines.pop()
    return lines


def lines(out: bytes, ans: bytes, _c: Checker) -> Result:
    got, want = _lines(out), _lines(ans)
    for i, (a, b) in enumerate(zip(got, want, strict=False)):
        if a != b:
            return False, f"line {i + 1}: got {_preview(a)}, expected {_preview(b)}"
    if len(got) != len(want):
        return False, f"got {len(got)} lines, expected {len(want)}"
    return True, ""


def _num(tok: bytes) -> float | None:
    try:
        v = float(tok)
    except ValueError:
        return None
    return v if math.isfinite(v) else None


def floats(out: bytes, ans: bytes, c: Checker) -> Result:
    """Tokens; where the expected token is a number, compare with tolerance."""
    got, want = out.split(), ans.split()
    if len(got) != len(want):
        return False, f"got {len(got)} tokens, expected {len(want)}"
    for i, (a, b) in enumerate(zip(got, want, strict=True)):
        exp = _num(b)
        if exp is None:
            if a != b:
                return False, f"token {i + 1}: got {_preview(a)}, expected {_preview(b)}"
            continue
        val = _num(a)
        if val is None:
            return False, f"token {i + 1}: got {_preview(a)}, expected a number near {b.decode()}"
        tol = max(c.abs_tol, c.rel_tol * abs(exp))
        if abs(val - exp) > tol:
            return False, f"token {i + 1}: got {a.decode()}, expected {b.decode()} within {tol:g}"
    return True, ""


BUILTIN: dict[str, Callable[[bytes, bytes, Checker], Result]] = {
    "exact": exact,
    "tokens": tokens,
    "lines": lines,
    "float": floats,
}
