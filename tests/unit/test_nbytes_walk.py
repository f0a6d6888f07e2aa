"""nbytes (sandboxd.engine.budget), walked in one loop per struct on every
admission (issue 18), counts exactly what the plain recursive definition does."""

from __future__ import annotations

from typing import Any

import msgspec

from sandboxd.engine.budget import OVERHEAD, nbytes
from sandboxd.schema import Limits, RunRequest, Submission, TestCase


def reference(obj: Any) -> int:
    """The definition: payload plus OVERHEAD per object, None counting nothing."""
    if isinstance(obj, bytes | bytearray | str):
        return OVERHEAD + len(obj)
    if isinstance(obj, msgspec.Struct):
        return OVERHEAD + sum(reference(getattr(obj, f)) for f in obj.__struct_fields__)
    if isinstance(obj, list | tuple):
        return OVERHEAD + sum(reference(x) for x in obj)
    if isinstance(obj, dict):
        return OVERHEAD + sum(reference(k) + reference(v) for k, v in obj.items())
    return 0 if obj is None else OVERHEAD


class Tagged(str):
    pass


def test_nbytes_counts_as_the_definition() -> None:
    objs: list[Any] = [
        RunRequest(cmd=["/bin/true"]),
        RunRequest(cmd=["a", Tagged("b")], env={"A": "1"}, stdin=b"x" * 1000, limits=Limits(wall_time=2.0)),
        Submission(lang="c", source=b"int main(){}", tests=[TestCase(input=b"1", expected=b"1"), TestCase()]),
        [b"ab", ("c", 1, 2.5, True, None)],
        {"k": bytearray(7)},
        None,
        3,
    ]
    for obj in objs:
        assert nbytes(obj) == reference(obj), obj
