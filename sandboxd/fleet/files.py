"""The fleet's file store, in its Redis: what the coordinator takes uploads
into and checks submissions against, and where hosts fetch a hash they lack.

Where the bytes live, and why: each file is one Redis string (so at most 512
MiB; files.max_file is lower), written by APPEND in 1 MiB chunks as the upload
arrives and read back by GETRANGE in 1 MiB chunks, so neither side holds a
whole file in memory.  Every host and coordinator already reaches this Redis,
while hosts know no coordinator address (there may be several, and any may
restart), so no second network path or coordinator-side disk is needed; the
cost is Redis memory, bounded by files.fleet_max_bytes in total: past it the
least recently named files go (a coordinator names a file again each time a
job it queues names it), but never one named within files.fleet_keep seconds,
so a queued job's files outlive its wait; with nothing old enough to evict an
upload is refused (429).  A host verifies every hash it fetches.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import AsyncIterator, Awaitable
from typing import Any, TypeVar, cast

import redis.asyncio as aioredis

from sandboxd.config import DEFAULT
from sandboxd.errors import error
from sandboxd.filestore import CHUNK, Writer
from sandboxd.jobs.files import refs_of, unknown

T = TypeVar("T")

# Into place under its name, after evicting the least recently named objects
# not named within `keep` seconds until it fits: 1 new, 0 stored already, -1 full.
_COMMIT = """
local p, name, tmp = ARGV[1], ARGV[2], ARGV[3]
local size, max, now, keep = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local obj, lru, sizes, total = p .. ':file:' .. name, p .. ':files:lru', p .. ':files:size', p .. ':files:total'
if redis.call('EXISTS', obj) == 1 then
  redis.call('DEL', tmp)
  redis.call('ZADD', lru, now, name)
  return 0
end
local used = tonumber(redis.call('GET', total) or '0')
while used + size > max do
  local old = redis.call('ZRANGE', lru, 0, 0, 'WITHSCORES')
  if #old == 0 or tonumber(old[2]) > now - keep then
    redis.call('DEL', tmp)
    return -1
  end
  redis.call('DEL', p .. ':file:' .. old[1])
  redis.call('ZREM', lru, old[1])
  used = used - tonumber(redis.call('HGET', sizes, old[1]) or '0')
  redis.call('HDEL', sizes, old[1])
end
if size == 0 then redis.call('SET', obj, '') else redis.call('RENAME', tmp, obj) end
redis.call('ZADD', lru, now, name)
redis.call('HSET', sizes, name, size)
redis.call('SET', total, used + size)
return 1
"""


def _aw(x: Awaitable[T] | T) -> Awaitable[T]:
    return cast(Awaitable[T], x)


class RedisFiles:
    """FileOps over the fleet's Redis (the coordinator), and a host's Remote."""

    def __init__(
        self,
        redis: aioredis.Redis,
        prefix: str,
        max_bytes: int = DEFAULT.files.fleet_max_bytes,
        max_file: int = DEFAULT.files.max_file,
        keep: float = DEFAULT.files.fleet_keep,
    ) -> None:
        self.redis = redis
        self.prefix = prefix  # the fleet's key prefix, braces and all (sandboxd.fleet.keys)
        self.max_bytes, self.max_file, self.keep = max_bytes, min(max_file, max_bytes), keep
        self._commit = redis.register_script(_COMMIT)

    def _obj(self, name: str) -> str:
        return f"{self.prefix}:file:{name}"

    async def _put(self, name: str, tmp: str, size: int) -> bool:
        args: list[Any] = [self.prefix, name, tmp, size, self.max_bytes, time.time(), self.keep]
        r = int(await self._commit(keys=[], args=args))
        if r < 0:
            raise error(
                "queue_full",
                f"the fleet's file store is full (files.fleet_max_bytes = {self.max_bytes}) of files named "
                f"within the last {self.keep} s; retry later",
            )
        return r == 1

    # --- FileOps (the coordinator) --------------------------------------------

    async def file_size(self, sha: str) -> int | None:
        v = await _aw(self.redis.hget(f"{self.prefix}:files:size", sha))
        return None if v is None else int(v)

    async def put_file(self, sha: str, body: AsyncIterator[bytes]) -> bool:
        if await self.file_size(sha) is not None:
            async for _ in body:
                pass
            await _aw(self.redis.zadd(f"{self.prefix}:files:lru", {sha: time.time()}, xx=True))
            return False
        tmp = f"{self.prefix}:filetmp:{secrets.token_hex(8)}"
        h, size, buf = hashlib.sha256(), 0, bytearray()
        try:
            async for chunk in body:
                size += len(chunk)
                if size > self.max_file:
                    raise error("too_large", f"body: more than files.max_file = {self.max_file} bytes")
                h.update(chunk)
                buf += chunk
                if len(buf) >= CHUNK:
                    await self._append(tmp, buf)
            await self._append(tmp, buf)
            if h.hexdigest() != sha:
                raise error("bad_request", f"sha256: the body's SHA-256 is {h.hexdigest()}, not {sha}")
            return await self._put(sha, tmp, size)
        finally:
            await _aw(self.redis.delete(tmp))

    async def _append(self, tmp: str, buf: bytearray) -> None:
        if buf:
            pipe = self.redis.pipeline(transaction=False)
            pipe.append(tmp, bytes(buf))
            pipe.expire(tmp, 3600)  # (an upload cut off: its partial bytes go)
            await pipe.execute()
            buf.clear()

    async def file_chunks(self, sha: str) -> AsyncIterator[bytes]:
        key, at = self._obj(sha), 0
        while True:
            b = await _aw(self.redis.getrange(key, at, at + CHUNK - 1))
            if not b:
                if at == 0 and not await _aw(self.redis.exists(key)):
                    raise error("not_found", f"no file {sha} in the fleet's store")
                return
            at += len(b)
            yield b

    async def check_refs(self, spec: object) -> None:
        """Before it is queued: every hash the job names is stored, and named now (kept fleet_keep longer)."""
        refs = refs_of(spec)
        if not refs:
            return
        pipe = self.redis.pipeline(transaction=False)
        for _, sha in refs:
            pipe.zadd(f"{self.prefix}:files:lru", {sha: time.time()}, xx=True)
        for _, sha in refs:
            pipe.exists(self._obj(sha))
        found = (await pipe.execute())[len(refs) :]
        missing = [r for r, ok in zip(refs, found, strict=True) if not ok]
        if missing:
            raise unknown(*missing[0], len(missing) - 1)

    # --- Remote (a host) ------------------------------------------------------

    async def fetch(self, name: str, w: Writer) -> bool:
        size = await self.file_size(name)
        if size is None:
            return False
        got = 0
        async for b in self.file_chunks(name):
            w.write(b)
            got += len(b)
        return got == size

    async def push(self, name: str, data: bytes) -> None:
        if len(data) > self.max_file:
            return
        tmp = f"{self.prefix}:filetmp:{secrets.token_hex(8)}"
        await _aw(self.redis.set(tmp, data, ex=3600))
        try:
            await self._put(name, tmp, len(data))
        except Exception:
            await _aw(self.redis.delete(tmp))  # (full: a cache entry not shared costs a compile elsewhere)
