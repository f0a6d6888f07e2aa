"""Queue-drain arithmetic shared by a daemon's queues and the fleet's: how
fast work completes (DrainRate) and how long a refused client should wait
(retry_after).  Pure functions of numbers, so the coordinator needs no engine."""

import math
import time
from collections.abc import Callable

# Retry-After bounds (seconds), the daemon's and the fleet's: at least a
# second (sooner is a busy loop for the client), at most a minute (a queue
# that has not moved for a minute is better re-asked than promised an hour).
RETRY_MIN, RETRY_MAX = 1.0, 60.0
# Time constant of the drain-rate average: long enough to smooth one slow
# run, short enough that a stalled or recovered queue shows within seconds.
DRAIN_TAU = 10.0


def retry_after(ahead: float, rate: float) -> float:
    """Seconds until `ahead` units of work drain at `rate` units per second."""
    if rate <= 0.0:
        return RETRY_MAX
    return min(RETRY_MAX, max(RETRY_MIN, ahead / rate))


class DrainRate:
    """Units completed per second: an exponentially decayed average (time
    constant `tau`), O(1) per event, corrected for the first `tau` seconds
    (otherwise it starts from 0 and promises far too long a wait).  `clock`
    is injectable so tests control time."""

    def __init__(self, tau: float = DRAIN_TAU, clock: Callable[[], float] = time.monotonic) -> None:
        self.tau, self.clock = tau, clock
        self._level = 0.0  # decayed sum of units / tau
        self._first = self._last = -1.0

    def note(self, units: float = 1.0, now: float | None = None) -> None:
        now = self.clock() if now is None else now
        if self._first < 0:
            self._first = self._last = now
        self._level = self._level * math.exp((self._last - now) / self.tau) + units / self.tau
        self._last = now

    def rate(self, now: float | None = None) -> float:
        if self._first < 0:
            return 0.0
        now = self.clock() if now is None else now
        level = self._level * math.exp((self._last - now) / self.tau)
        # A constant rate r observed for `span` seconds leaves level = r(1 - e^-span/tau);
        # span is taken as at least a second, so that one event is not an infinite rate.
        span = max(now - self._first, 1.0)
        return level / -math.expm1(-span / self.tau)
