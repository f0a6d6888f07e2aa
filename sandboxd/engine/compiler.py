"""Compiles with single flight: identical compiles in flight share one.

A Judge0 batch of twenty submissions of one program compiles once, not twenty
times in parallel: the first caller runs `Engine.compile` (which has its own
cache of finished compiles), the others await its result.  Engine work, so it
lives here, below every API that uses it (sandboxd.compat's run modules take
it as their `Compiler`).
"""

from __future__ import annotations

import asyncio
import hashlib
from typing import TYPE_CHECKING

import msgspec

if TYPE_CHECKING:
    from sandboxd.engine.engine import Compiled, Engine
    from sandboxd.schema import FileIn, Limits


class Compiler:
    """Engine.compile with single flight: identical compiles in flight share one."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._inflight: dict[bytes, asyncio.Future[Compiled]] = {}

    async def compile(
        self,
        lang: str,
        source: bytes,
        files: list[FileIn],
        options: list[str],
        limits: Limits | None = None,
    ) -> Compiled:
        key = hashlib.sha256(msgspec.msgpack.encode([lang, source, files, options, limits])).digest()
        fut = self._inflight.get(key)
        if fut is not None:
            return await asyncio.shield(fut)
        fut = asyncio.get_running_loop().create_future()
        self._inflight[key] = fut
        try:
            comp = await self.engine.compile(lang, source, files, options, limits)
        except asyncio.CancelledError:
            fut.cancel()
            raise
        except Exception as e:
            fut.set_exception(e)
            fut.exception()  # retrieved: no "never retrieved" warning when nobody shares it
            raise
        finally:
            self._inflight.pop(key, None)
        fut.set_result(comp)
        return comp
