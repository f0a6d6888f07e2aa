"""Judge0's GET /statistics, as far as this process can honestly fill it.

Judge0 counts its submissions table (Postgres: every submission ever kept).
Here submissions are jobs that expire `results_ttl` after they finish, and a
fleet's are in Redis, so there is no table to count.  What is counted instead,
per process (a coordinator counts what went through it), since it started:

    submissions.total/today/last_30_days  created through this API (by UTC day)
    languages                             the same, by language
    statuses                              finished submissions whose result this
                                          process served (GET, wait, batch), each
                                          token once (the last MAX_TOKENS remembered)
    database                              null: there is no database

Judge0 caches the answer for 10 minutes (`cached_until`); this one is live, so
`cached_until` is `now`.
"""

from __future__ import annotations

import time
import weakref
from collections import Counter, OrderedDict
from datetime import UTC, date, datetime, timedelta

from sandboxd.compat import Backend
from sandboxd.compat.judge0.casts import timestamp
from sandboxd.compat.judge0.request import Request
from sandboxd.compat.judge0.tables import STATUSES

MAX_TOKENS = 100_000  # tokens remembered as counted (bounded: one entry ~150 bytes)
DAYS = 30


class Stats:
    def __init__(self) -> None:
        self.total = 0
        self.by_day: Counter[date] = Counter()
        self.by_language: dict[int, tuple[str, int]] = {}
        self.by_status: Counter[int] = Counter()
        self._counted: OrderedDict[str, None] = OrderedDict()

    def created(self, req: Request, now: float | None = None) -> None:
        self.total += 1
        day = datetime.fromtimestamp(time.time() if now is None else now, UTC).date()
        self.by_day[day] += 1
        for old in [d for d in self.by_day if d <= day - timedelta(days=DAYS)]:
            del self.by_day[old]  # bounded: the last 30 days only
        name, n = self.by_language.get(req.language_id, (req.language_name, 0))
        self.by_language[req.language_id] = (name, n + 1)

    def finished(self, token: str, status_id: int) -> None:
        if token in self._counted:
            return
        self._counted[token] = None
        if len(self._counted) > MAX_TOKENS:
            self._counted.popitem(last=False)
        self.by_status[status_id] += 1

    def view(self, now: float | None = None) -> dict[str, object]:
        t = time.time() if now is None else now
        today = datetime.fromtimestamp(t, UTC).date()
        days = {str(today - timedelta(days=i)): self.by_day.get(today - timedelta(days=i), 0) for i in range(DAYS)}
        langs = sorted(self.by_language.items(), key=lambda kv: -kv[1][1])
        return {
            "now": timestamp(t),
            "cached_until": timestamp(t),
            "submissions": {"total": self.total, "today": days[str(today)], "last_30_days": days},
            "languages": [{"language": {"id": jid, "name": name}, "count": n} for jid, (name, n) in langs],
            "statuses": [
                {"status": {"id": sid, "name": STATUSES[sid]}, "count": n} for sid, n in sorted(self.by_status.items())
            ],
            "database": None,
        }


# One per backend: the Judge0 apps of one process (a prefix and a listener of its own) count together.
_STATS: weakref.WeakKeyDictionary[Backend, Stats] = weakref.WeakKeyDictionary()


def of(backend: Backend) -> Stats:
    s = _STATS.get(backend)
    if s is None:
        s = _STATS[backend] = Stats()
    return s
