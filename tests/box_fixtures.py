"""The root suite's plugin: one real engine (real namespaces, cgroups,
seccomp) per session, and the host cgroup leak check.  Loaded by
tests/conftest.py for every session beyond tests/unit.

Tests are synchronous; `SyncEngine` drives the asyncio engine on a private
uvloop loop, so test code reads top to bottom without async plumbing.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

import pytest
import uvloop
from instances import PREFIX, inst

from sandboxd.engine.engine import Engine, EngineConfig, SourceResult
from sandboxd.sandbox import cgroups
from sandboxd.schema import Limits, RunRequest, RunResult

T = TypeVar("T")


def pytest_configure(config: pytest.Config) -> None:
    if os.geteuid() != 0:
        pytest.exit("sandboxd's tests run as root against real namespaces and cgroups (tests/unit runs as anyone)", 2)


class SyncEngine:
    def __init__(self, cfg: EngineConfig) -> None:
        self.loop = uvloop.new_event_loop()
        self.engine: Engine = self.call(Engine.start(cfg))

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)

    def run(self, cmd: list[str] | None = None, req: RunRequest | None = None, **kw: Any) -> RunResult:
        if req is None:
            assert cmd is not None
            req = RunRequest(cmd=cmd, **kw)
        return self.call(self.engine.run(req))

    def source(self, lang: str, src: str | bytes, stdin: bytes = b"", **kw: Any) -> SourceResult:
        data = src.encode() if isinstance(src, str) else src
        return self.call(self.engine.run_source(lang, data, stdin=stdin, **kw))

    def gather(self, *coros: Coroutine[Any, Any, Any]) -> list[Any]:
        async def all_() -> list[Any]:
            return list(await asyncio.gather(*coros))

        return self.call(all_())

    def close(self) -> None:
        self.call(self.engine.close())
        self.loop.close()


def leftover_cgroups() -> list[str]:
    """cgroup directories of this session's test instances (PREFIX, or PREFIX-
    and a suffix: instances.inst) still on the host.  Not PREFIX* alone: the
    session tagged "ci" would count the one tagged "ci2" running beside it."""
    be = cgroups.detect("pytest-probe", create=False)
    roots = list(be.base.values()) if isinstance(be, cgroups.V1) else [be.root]
    found = (p for r in roots if r.parent.exists() for p in r.parent.glob(PREFIX + "*"))
    return sorted(str(p) for p in found if p.name == PREFIX or p.name.startswith(PREFIX + "-"))


@pytest.fixture(scope="session", autouse=True)
def no_leaks() -> Iterator[None]:
    """Fails the run if the tests (or the daemons they start) leak cgroups."""
    yield
    assert not leftover_cgroups(), f"leaked cgroups: {leftover_cgroups()}"


@pytest.fixture(scope="session")
def engine() -> Iterator[SyncEngine]:
    # Its own instance name (and a leased uid range): the tests may run next
    # to a live daemon on the same host.
    eng = SyncEngine(EngineConfig(instance=inst(), pool_size=2))
    yield eng
    eng.close()


def limits(**kw: Any) -> Limits:
    return Limits(**kw)
