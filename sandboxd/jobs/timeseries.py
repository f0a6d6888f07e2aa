"""Run times over the last minutes, for the dashboard: per-second buckets in a fixed ring.

Each finished run adds its wall time (`RunTimes.append`, the per-run path: a
few arithmetic operations).  Only the current second keeps its samples (at
most SAMPLES of them); when the second ends they become (count, p50, p99) and
the samples go, so the whole series is bounded by SECONDS buckets of three
numbers plus one second's samples, however many runs there are.  The older
`recent` view (the last RECENT wall times, /v1/status) is kept here too.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence

SECONDS = 600  # buckets kept: the last 10 minutes
SAMPLES = 256  # wall times kept for the current second's percentiles (a bounded sample)
RECENT = 200  # the last wall times, for /v1/status's recent_wall_time
# What a fleet host sends with each heartbeat (a few KiB at most): the coordinator's dashboard window.
SERIES_SECONDS = 120
# One finished second: (unix second, runs finished, p50 wall time, p99 wall time).
Bucket = tuple[int, int, float, float]


def _percentiles(samples: Sequence[float]) -> tuple[float, float]:
    s = sorted(samples)
    return s[len(s) // 2], s[min(len(s) - 1, int(len(s) * 0.99))]


class RunTimes:
    """Wall times of finished runs: the last RECENT of them and per-second buckets."""

    def __init__(self, clock: Callable[[], float] = time.time, seconds: int = SECONDS) -> None:
        self._clock = clock
        self.recent: deque[float] = deque(maxlen=RECENT)
        self._ring: deque[Bucket] = deque(maxlen=seconds)
        self._second = 0  # the second _samples belong to
        self._count = 0  # runs finished in it (may exceed len(_samples))
        self._samples: list[float] = []

    def append(self, wall_time: float) -> None:
        self.recent.append(wall_time)
        now = int(self._clock())
        if now != self._second:
            self._close()
            self._second = now
        self._count += 1
        if len(self._samples) < SAMPLES:
            self._samples.append(wall_time)
        else:  # a busy second: keep a rolling sample of it, bounded
            self._samples[self._count % SAMPLES] = wall_time

    def _close(self) -> None:
        if self._count:
            self._ring.append((self._second, self._count, *_percentiles(self._samples)))
        self._count = 0
        self._samples = []

    def __iter__(self) -> Iterator[float]:
        return iter(self.recent)

    def __len__(self) -> int:
        return len(self.recent)

    def series(self, last: int = SECONDS) -> list[Bucket]:
        """The buckets of the last `last` seconds that had runs, oldest first (the
        current second included, as it stands)."""
        since = int(self._clock()) - last
        out = [b for b in self._ring if b[0] > since]
        if self._count and self._second > since:
            out.append((self._second, self._count, *_percentiles(self._samples)))
        return out


def merge(series: Sequence[Sequence[Sequence[float]]]) -> list[Bucket]:
    """Several hosts' series as one (the coordinator's): counts add up; p50 is the
    count-weighted mean of the hosts' p50s and p99 the largest host p99 (exact
    percentiles would need every sample, which hosts do not send: both are
    approximations, p99 an upper bound)."""
    by_second: dict[int, list[tuple[int, float, float]]] = {}
    for one in series:
        for b in one:
            try:
                sec, count, p50, p99 = b  # (written by hosts of this version; anything else is skipped)
                by_second.setdefault(int(sec), []).append((int(count), float(p50), float(p99)))
            except (TypeError, ValueError):
                continue
    out: list[Bucket] = []
    for sec in sorted(by_second):
        parts = by_second[sec]
        total = sum(c for c, _, _ in parts)
        if total > 0:
            mean = sum(c * p for c, p, _ in parts) / total
            out.append((sec, total, round(mean, 6), max(p for _, _, p in parts)))
    return out
