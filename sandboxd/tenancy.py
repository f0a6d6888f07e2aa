"""Tenants: who a request is for, and the arithmetic of its limits.

Pure: the tenants file's schema (`Tenant`), key hashing, the token bucket of a
tenant's rate limit and the UTC-day arithmetic of its CPU quota.  Shared
layer, so that the daemon's jobs layer, the HTTP/socket transports and the
fleet coordinator read one definition (sandboxd.jobs.tenants keeps the state).

Keys are stored as SHA-256 of the key, not argon2/bcrypt: those slow hashes
exist to make guessing a *password* (low entropy, chosen by a person)
expensive; a key here is 192 random bits made by `new_key`, which no
attacker can enumerate whatever the hash costs, and a fast hash keeps the
lookup one dict access per request (a slow hash would be a CPU sink any
unauthenticated client could trigger).
"""

from __future__ import annotations

import hashlib
import math
import secrets
import time
from collections.abc import Callable
from typing import Annotated

import msgspec
from msgspec import Meta

from sandboxd.schema import MAX_PRIORITY

KEY_PREFIX = "sbx_"  # makes a leaked key recognisable to secret scanners
TenantName = Annotated[str, Meta(pattern=r"^[A-Za-z0-9._-]{1,64}$")]
DAY = 86400.0
NO_KEY = "0" * 64  # a tenant written without a key (none matches it)


class Tenant(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, omit_defaults=True):
    """One tenant, as the tenants file (and the admin API) holds it.  Every
    limit's default (0, or all) is "none": a tenant is limited only where the
    operator says so."""

    name: TenantName
    key_sha256: Annotated[str, Meta(pattern=r"^[0-9a-f]{64}$")] = NO_KEY  # the admin API sets it
    languages: list[str] = msgspec.field(default_factory=list)  # language ids it may use; empty: all
    rate: Annotated[float, Meta(ge=0)] = 0.0  # jobs per second (token bucket refill); 0: unlimited
    burst: Annotated[int, Meta(ge=1, le=1_000_000)] = 10  # jobs it may send at once (bucket size)
    concurrency: Annotated[int, Meta(ge=0)] = 0  # its jobs in flight at once; 0: unlimited
    cpu_seconds_per_day: Annotated[float, Meta(ge=0)] = 0.0  # CPU seconds per UTC day; 0: unlimited
    max_priority: Annotated[int, Meta(ge=-MAX_PRIORITY, le=MAX_PRIORITY)] = MAX_PRIORITY
    weight: Annotated[float, Meta(gt=0, le=1_000_000)] = 1.0  # its share of boxes when oversubscribed


class TenantsFile(msgspec.Struct, forbid_unknown_fields=True):
    tenants: list[Tenant] = msgspec.field(default_factory=list)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    """A new API key: 192 random bits (shown once; only its hash is kept)."""
    return KEY_PREFIX + secrets.token_urlsafe(24)


def utc_day(t: float) -> int:
    """The UTC day number of a Unix time: a quota's period."""
    return int(t // DAY)


def until_midnight(t: float) -> float:
    """Seconds from `t` to the next UTC midnight, when a quota resets."""
    return (utc_day(t) + 1) * DAY - t


class TokenBucket:
    """`rate` tokens a second up to `burst`; a job takes one.  Also what the
    IETF RateLimit header fields report: the limit, what remains and when
    the bucket is full again.  `clock` is injectable for tests."""

    __slots__ = ("_last", "_level", "burst", "clock", "rate")

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate, self.burst, self.clock = rate, burst, clock
        self._level = float(burst)
        self._last = clock()

    def _refill(self, now: float) -> None:
        self._level = min(float(self.burst), self._level + (now - self._last) * self.rate)
        self._last = now

    def take(self) -> float:
        """0.0 if a token was taken; else the seconds until one is there."""
        now = self.clock()
        self._refill(now)
        if self._level >= 1.0:
            self._level -= 1.0
            return 0.0
        return (1.0 - self._level) / self.rate if self.rate > 0 else math.inf

    @property
    def remaining(self) -> int:
        self._refill(self.clock())
        return int(self._level)

    def reset(self) -> float:
        """Seconds until the bucket is full again."""
        self._refill(self.clock())
        return (self.burst - self._level) / self.rate if self.rate > 0 else 0.0
