"""The memory-budget hold of the request body being handled, as a context variable.

A transport reserves a body's bytes from the daemon's memory budget before it
reads them (sandboxd.api.inbound.Inbound.hold_body: holder "receiving") and
sets `BODY` for the task that handles it.  The hold counts every copy the
request makes on its way in (`copies`), not the body alone: the received
buffer beside the request decoded from it, then the decoded request beside
the msgpack of its spec for the job store.  When that request's job is
admitted, its own reservation (holder "requests", of the decoded payload)
takes its share of the body's place (sandboxd.engine.budget.MemoryBudget.
admit_request); the rest stays held until the job's spec is stored
(sandboxd.api.wire.dispatch: `stored`), then is given back.  Shared (not
the API's or the engine's) because the API layer may not import the engine:
a coordinator serves it without one; the configuration checks the budget
holds a maximal request (`MAX_COPIES` x max_body).
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Protocol

# Copies of a body of n bytes held at once, at most, while its request is
# admitted.  msgpack: the received buffer and the request decoded from it
# (whose bytes are copies: msgspec's bytes fields), then the decoded request and
# its spec's msgpack for the job store (about the body's size again).  (A run's
# stdin is neither: a view of the body, stored by reference, sandboxd.jobs.
# specpieces; its files and a submission's tests are, so the bound stays.)  JSON
# (and forms): the body, the msgpack a decode worker hands back (base64 and
# JSON's quoting gone: at most the body's size) and the request decoded from
# that (3/4 of the body, base64's ratio): 2.5.
COPIES_MSGPACK = 2.0
COPIES_OTHER = 2.5
MAX_COPIES = max(COPIES_MSGPACK, COPIES_OTHER)


# Of memory_budget, the part its holders leave free: what no holder counts
# and the daemon's RSS still grows by under load (per-connection and
# per-request interpreter objects, allocator slack, code pages first touched),
# measured at 10-15 MiB over the holders' count under issue 13's loads
# (benchmarks/hostile_load.py).  So the budget bounds the daemon's RSS growth,
# not only its holders' sum.  Never so much that a maximal body (`need`:
# MAX_COPIES x max_body, which the configuration checks the budget holds)
# would not fit: a small budget keeps less.
HEADROOM_SHARE = 1 / 8
HEADROOM_MAX = 64 << 20


def headroom(limit: int, need: int) -> int:
    """The bytes of a memory budget of `limit` its holders leave free."""
    return max(0, min(int(limit * HEADROOM_SHARE), HEADROOM_MAX, limit - need))


def copies(n: int, msgpack: bool) -> int:
    """The budget a body of n bytes holds from its headers until its job's spec is stored."""
    return int(n * (COPIES_MSGPACK if msgpack else COPIES_OTHER))


class BodyHold(Protocol):
    @property
    def n(self) -> int: ...

    def release(self, *, freed: bool = True) -> None: ...


BODY: ContextVar[BodyHold | None] = ContextVar("sandboxd_body_hold", default=None)


def stored() -> None:
    """The request's job is stored (or refused): what its body's hold still
    counts (the received buffer, the spec's msgpack) is gone; give it back
    now rather than when its handler is done (a waited run: the job's end)."""
    hold = BODY.get()
    if hold is not None:
        hold.release()
