"""When and how long the client retries a call.

Every call that starts a job carries an idempotency key (a fresh one unless
the caller gives one), and a retry re-sends the same key: the daemon or the
fleet answers with the job the first attempt started, if it started one, so
a retry never runs a job twice.  Calls are retried on what a restart, a
failover or an overloaded server looks like (HTTP 503 / `draining`, a refused
or dropped connection, end of stream before the reply) with bounded, jittered
exponential backoff, at least the server's Retry-After, until a deadline
counted from the first failure of an outage (a dropped live connection starts
a new one).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import aiohttp

# Wire error codes that mean "not now, try again": the daemon or coordinator
# is stopping or cannot reach its Redis (503), or the connection dropped
# before the reply (the client's own code).
RETRY_CODES = frozenset({"draining", "disconnected"})
# HTTP statuses that mean "not now" whatever the code in the body: 503 is a
# refusal before any work (the daemon's connection and receive-bytes caps send
# it with code queue_full; 429 queue_full, a full job queue, stays final).
RETRY_STATUSES = frozenset({503})

# Transport failures of a restart: refused/reset connections (ConnectionError),
# a Unix socket not there yet (FileNotFoundError), a peer gone mid-reply.
RETRY_EXCEPTIONS: tuple[type[BaseException], ...] = (
    ConnectionError,
    FileNotFoundError,
    EOFError,
    aiohttp.ClientConnectionError,
    aiohttp.ClientPayloadError,
)


@dataclass(frozen=True)
class Retry:
    """The retry policy of a client: `Retry(deadline=0)` turns retries off."""

    deadline: float = 60.0  # seconds from the first failure of an outage after which a failure is final
    first: float = 0.1  # seconds before the first retry
    factor: float = 2.0  # each further wait grows by this
    cap: float = 5.0  # longest wait between attempts (unless the server's Retry-After says more)

    def backoff(self, attempt: int) -> float:
        """The wait before retry number `attempt` (0-based): full jitter in the
        upper half, so clients that failed together do not come back together."""
        base = min(self.cap, self.first * self.factor**attempt)
        return base * random.uniform(0.5, 1.0)


DEFAULT_RETRY = Retry()
