"""Ruby and Rails as Judge0 reads and writes values: ActiveModel's casts of raw
parameters, the numericality check's view of a number, decimal columns and
timestamps as Rails serializes them, and bash's word splitting of options."""

from __future__ import annotations

import math
import shlex
from datetime import UTC, datetime
from typing import Any

from sandboxd.compat.judge0.tables import UNSAFE_SHELL


def decimal(x: float | None) -> str | None:
    """A decimal column as Rails serializes it: "5.0", "0.016"."""
    if x is None:
        return None
    s = f"{x:.6f}".rstrip("0")
    return s + "0" if s.endswith(".") else s


def seconds(x: float | None) -> str | None:
    """A measured time as Judge0 shows it: isolate's meta file has milliseconds
    (`time:0.012`, truncated), the decimal column keeps them, and Rails prints a
    BigDecimal without trailing zeros ("0.012", "0.01", "0.0")."""
    if x is None:
        return None
    return decimal(math.floor(x * 1000 + 1e-9) / 1000)


def timestamp(unix: float | None) -> str | None:
    if unix is None:
        return None
    t = datetime.fromtimestamp(unix, UTC)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


def ruby_num(x: float) -> str:
    return str(x)  # 0 -> "0", 15.0 -> "15.0", as Ruby prints Integer and Float bounds


def words(s: str | None) -> list[str]:
    """Judge0 pastes options and arguments into a bash script: split as bash would
    (quotes, no expansion) once its unsafe characters are gone; ValueError as bash's
    syntax error."""
    return shlex.split(s.translate(UNSAFE_SHELL)) if s else []


def scalar_str(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def optional_str(v: Any) -> str | None:
    """A string parameter: None stays None, another scalar is printed as Ruby would."""
    return None if v is None else (v if isinstance(v, str) else scalar_str(v))


def number(v: Any) -> tuple[float | None, bool]:
    """(value, not-a-number?) as Rails' numericality sees a raw parameter; None/""/false: unset."""
    if v is None or v is False or (isinstance(v, str) and not v.strip()):
        return None, False
    if v is True:
        return None, True
    if isinstance(v, (int, float)):
        return (float(v), False) if math.isfinite(v) else (None, True)
    if isinstance(v, str):
        try:
            f = float(v.strip())
        except ValueError:
            return None, True
        return (f, False) if math.isfinite(f) else (None, True)
    return None, True


def int_cast(v: Any) -> int | None:
    if isinstance(v, bool) or v is None:
        return None
    if isinstance(v, int):
        return v
    if isinstance(v, float):
        return int(v) if math.isfinite(v) else None
    if isinstance(v, str):
        try:
            f = float(v.strip())
        except ValueError:
            return None
        return int(f) if math.isfinite(f) else None
    return None


_FALSE = frozenset({"0", "f", "F", "false", "FALSE", "off", "OFF"})


def boolean(v: Any, default: bool) -> bool:
    """ActiveModel's boolean cast; nil and "" take the default."""
    if v is None or v == "":
        return default
    if isinstance(v, bool):
        return v
    if isinstance(v, (int, float)):
        return v != 0
    return str(v) not in _FALSE
