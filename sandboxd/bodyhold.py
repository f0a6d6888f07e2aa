"""The memory-budget hold of the request body being handled, as a context variable.

A transport reserves a body's bytes from the daemon's memory budget before it
reads them (sandboxd.api.inbound.Inbound.hold_body: holder "receiving") and
sets `BODY` for the task that handles it.  When that request's job is
admitted, its own reservation (holder "requests", of the decoded payload)
takes the body's place (sandboxd.engine.budget.MemoryBudget.admit_request):
the body's bytes are credited, not counted twice, so a job as large as the
budget allows still fits an idle daemon.  Shared (not the API's or the
engine's) because the API layer may not import the engine: a coordinator
serves it without one.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Protocol


class BodyHold(Protocol):
    @property
    def n(self) -> int: ...

    def release(self, *, freed: bool = True) -> None: ...


BODY: ContextVar[BodyHold | None] = ContextVar("sandboxd_body_hold", default=None)
