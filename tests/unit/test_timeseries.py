"""The dashboard's run-time series: per-second buckets, bounded, merged across hosts."""

from __future__ import annotations

from sandboxd.jobs.timeseries import RECENT, SAMPLES, RunTimes, merge


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_buckets_per_second_with_percentiles() -> None:
    clock = Clock()
    rt = RunTimes(clock)
    for v in (0.1, 0.2, 0.3):
        rt.append(v)
    clock.t = 1001.5
    rt.append(1.0)
    assert rt.series() == [(1000, 3, 0.2, 0.3), (1001, 1, 1.0, 1.0)]
    assert list(rt) == [0.1, 0.2, 0.3, 1.0] and len(rt) == 4  # the /v1/status view


def test_bounded_in_seconds_and_samples() -> None:
    clock = Clock()
    rt = RunTimes(clock, seconds=5)
    for s in range(20):
        clock.t = 1000 + s
        for _ in range(SAMPLES * 3):
            rt.append(0.5)
        assert len(rt._samples) <= SAMPLES
    series = rt.series(last=100)
    assert len(series) == 6  # 5 closed buckets kept, plus the current second
    assert all(b[1] == SAMPLES * 3 for b in series)  # counts are exact even where samples are not
    assert len(rt.recent) == RECENT


def test_window_drops_old_seconds() -> None:
    clock = Clock()
    rt = RunTimes(clock)
    rt.append(0.1)
    clock.t = 1100
    assert rt.series(last=60) == []


def test_merge_adds_counts_and_bounds_p99() -> None:
    a = [[10, 2, 0.1, 0.5], [11, 1, 0.2, 0.2]]
    b = [[10, 2, 0.3, 0.9], "junk", [12, "x", 1, 1]]
    assert merge([a, b]) == [(10, 4, 0.2, 0.9), (11, 1, 0.2, 0.2)]
