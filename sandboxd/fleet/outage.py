"""Riding out a Redis outage (restart, failover, AOF loading): which errors
are one, doubling waits between retries, and a warning line every few
seconds instead of one per attempt.  Shared by every fleet loop that talks
to Redis: the host's registration, claims and reports, the coordinator's
result subscription, a host's session bills."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

T = TypeVar("T")

# What a transient Redis outage looks like: the loops retry these; anything
# else is a bug or bad data and is raised.
TRANSIENT: tuple[type[Exception], ...] = (RedisConnectionError, RedisTimeoutError, OSError)


def transient(e: BaseException) -> bool:
    if isinstance(e, TRANSIENT):
        return True
    if isinstance(e, RuntimeError) and "the handler is closed" in str(e):
        # uvloop's answer (not an OSError) when redis-py writes to a connection
        # the killed Redis already closed; redis-py drops that connection and
        # the retry reconnects.  Seen as a client's "internal error" in CI.
        return True
    # A Redis that is still loading its AOF after a restart answers LOADING.
    return isinstance(e, ResponseError) and str(e).startswith("LOADING")


class OutageLog:
    """Redis outages are retried quietly: one warning line every few seconds, not a flood."""

    def __init__(self, logger: logging.Logger, every: float = 5.0) -> None:
        self.logger, self.every, self.last = logger, every, 0.0

    def __call__(self, what: str, e: BaseException) -> None:
        now = time.monotonic()
        if now - self.last > self.every:
            self.last = now
            self.logger.warning("fleet: %s: %s (retrying)", what, e)


class Backoff:
    """Waits between retries: `first`, doubling up to `most`; reset() once one succeeds."""

    def __init__(self, first: float = 0.05, most: float = 2.0) -> None:
        self.first, self.most, self.delay = first, most, first

    async def wait(self) -> None:
        await asyncio.sleep(self.delay)
        self.delay = min(self.most, self.delay * 2)

    def reset(self) -> None:
        self.delay = self.first


async def retry_transient(call: Callable[[], Awaitable[T]], limit: float, warn: Callable[[BaseException], None]) -> T:
    """call() until it succeeds; a transient error is warned of and retried
    (Backoff) for `limit` seconds, then raised like any other."""
    t0, backoff = time.monotonic(), Backoff()
    while True:
        try:
            return await call()
        except Exception as e:
            if not transient(e) or time.monotonic() - t0 > limit:
                raise
            warn(e)
            await backoff.wait()
