"""Piston's constraints (`*_timeout`, `*_cpu_time`, `*_memory_limit`) as our limits.

`*_timeout` is wall time and `*_cpu_time` CPU time in ms, `*_memory_limit`
bytes.  The configured limit of each (a request above it is the 400 Piston
gives) is the language's maximum; a run defaults to 3000 ms CPU and 5000 ms
wall, a compile to the language's compile limits.  A negative memory limit
(Piston's -1, "none", which its clients send by default) means the
language's default memory.
"""

from __future__ import annotations

from typing import Any

import msgspec

from sandboxd.compat.piston.errors import PistonError
from sandboxd.languages import Language
from sandboxd.schema import MAX_MEMORY, Limits

MiB = 1 << 20
RUN_CPU_MS = 3000
RUN_WALL_MS = 5000


def configured(lang: Language) -> dict[str, dict[str, int]]:
    """The configured limit of each constraint (Piston's rt.timeouts, cpu_times, memory_limits)."""
    cl, mx = lang.compile_limits, lang.max_limits
    run_cpu = mx.cpu_time if mx.cpu_time is not None else 30.0
    run_wall = mx.wall_time if mx.wall_time is not None else 2 * run_cpu + 1
    return {
        "timeout": {"compile": round(cl.wall * 1000), "run": round(run_wall * 1000)},
        "cpu_time": {"compile": round(cl.cpu_time * 1000), "run": round(run_cpu * 1000)},
        "memory_limit": {"compile": cl.memory, "run": mx.memory if mx.memory is not None else MAX_MEMORY},
    }


def limits(lang: Language, body: dict[str, Any]) -> tuple[Limits | None, Limits]:
    """(compile limits or None for the language's own, run limits); PistonError(400) as Piston."""
    given = _given(configured(lang), body)
    comp: Limits | None = None
    if any(k.startswith("compile_") for k in given):
        cl = lang.compile_limits
        comp = msgspec.structs.replace(
            cl,
            cpu_time=given.get("compile_cpu_time", cl.cpu_time * 1000) / 1000,
            wall_time=given.get("compile_timeout", cl.wall * 1000) / 1000,
            memory=max(int(given.get("compile_memory_limit", cl.memory)), 4 * MiB),
        )
    d = lang.default_limits
    run = msgspec.structs.replace(
        d,
        cpu_time=given.get("run_cpu_time", RUN_CPU_MS) / 1000,
        wall_time=given.get("run_timeout", RUN_WALL_MS) / 1000,
        memory=max(int(given.get("run_memory_limit", d.memory)), 4 * MiB),
    )
    return comp, run


def _given(conf: dict[str, dict[str, int]], body: dict[str, Any]) -> dict[str, float]:
    """The constraints the request sets, checked in Piston's order."""
    given: dict[str, float] = {}
    for constraint in ("memory_limit", "timeout", "cpu_time"):
        for typ in ("compile", "run"):
            name = f"{typ}_{constraint}"
            value = body.get(name)
            if not value:  # Piston: `if (!constraint_value) continue`
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise PistonError(400, f"If specified, {name} must be a number")
            if constraint == "memory_limit" and value < 0:
                continue  # -1: no limit of its own, i.e. the language's default memory
            limit = conf[constraint][typ]
            if value > limit:
                raise PistonError(400, f"{name} cannot exceed the configured limit of {limit}")
            if value < 0:
                raise PistonError(400, f"{name} must be non-negative")
            given[name] = float(value)
    return given
