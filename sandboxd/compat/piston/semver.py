"""node-semver's version parsing and `satisfies`, for the ranges Piston's clients send."""

from __future__ import annotations

import re

Version = tuple[int, int, int]


def parse(v: str) -> Version | None:
    m = re.fullmatch(r"v?(\d+)(?:\.(\d+))?(?:\.(\d+))?(?:[-+].*)?", v.strip())
    if not m:
        return None
    return int(m[1]), int(m[2] or 0), int(m[3] or 0)


def satisfies(version: str, selector: str) -> bool:
    """node-semver's `satisfies` for the common ranges: *, x-ranges (3, 3.11, 3.x),
    exact versions, comparators (>=, >, <=, <, =), ~ and ^, AND (space) and OR (||)."""
    v = parse(version)
    if v is None:
        return False
    if not selector.strip():
        return True
    return any(all(_comparator(v, c) for c in alt.split()) for alt in selector.split("||") if alt.strip())


def _comparator(v: Version, c: str) -> bool:
    m = re.fullmatch(r"(>=|<=|>|<|=|~|\^)?v?(\d+|[xX*])(?:\.(\d+|[xX*]))?(?:\.(\d+|[xX*]))?(?:[-+].*)?", c)
    if not m:
        return False
    op = m[1] or ""
    n: list[int] = []
    for p in (m[2], m[3], m[4]):
        if p is None or p in ("x", "X", "*"):
            break
        n.append(int(p))
    if not n:  # *, x: any version (nothing is below or above "any")
        return op not in ("<", ">")
    return _compare(v, op, n)


def _compare(v: Version, op: str, n: list[int]) -> bool:
    """v against the version given by its first len(n) parts (the rest: an x-range)."""
    padded = [*n, 0, 0, 0]
    low = padded[0], padded[1], padded[2]

    def bump(i: int) -> Version:
        b = [*n[: i + 1], 0, 0, 0]
        b[i] += 1
        return b[0], b[1], b[2]

    partial = len(n) < 3
    upper = bump(len(n) - 1)  # the end of the x-range n.*
    if op in ("", "="):
        return low <= v < upper if partial else v == low
    if op == ">=":
        return v >= low
    if op == ">":
        return v >= upper if partial else v > low
    if op == "<":
        return v < low
    if op == "<=":
        return v < upper if partial else v <= low
    if op == "~":
        return low <= v < bump(min(1, len(n) - 1))
    # ^: the leftmost nonzero part given may not change
    i = next((k for k, p in enumerate(n) if p != 0), len(n) - 1)
    return low <= v < bump(i)
