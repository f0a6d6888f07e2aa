"""Queue-drain arithmetic (sandboxd/rates.py), as properties; the measured
rate on a fake clock: tests/unit/test_budget.py."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from sandboxd.rates import RETRY_MAX, RETRY_MIN, DrainRate, retry_after

PROPS = settings(max_examples=100, deadline=None, database=None)
amounts = st.floats(min_value=0, max_value=1e9)
rates = st.floats(min_value=-1.0, max_value=1e6)


@PROPS
@given(amounts, amounts, rates)
def test_retry_after_is_bounded_and_grows_with_the_work_ahead(a: float, b: float, rate: float) -> None:
    lo, hi = sorted((a, b))
    assert RETRY_MIN <= retry_after(lo, rate) <= retry_after(hi, rate) <= RETRY_MAX


@settings(max_examples=60, deadline=None, database=None)  # each example notes up to 3000 completions
@given(st.floats(min_value=0.05, max_value=50), st.floats(min_value=0.5, max_value=20))
def test_a_steady_rate_is_measured_as_itself(rate: float, tau: float) -> None:
    d = DrainRate(tau=tau, clock=lambda: 0.0)
    step = 1.0 / rate
    n = max(2, math.ceil(3 * tau * rate))  # three time constants of steady completions
    for i in range(n):
        d.note(now=i * step)
    # The bias correction makes it right whatever the span measured (above a second).
    span = (n - 1) * step
    assert span < 1.0 or math.isclose(d.rate(now=span), rate, rel_tol=0.1 + 2 * step / tau)


def test_no_completion_yet_is_no_rate() -> None:
    assert DrainRate(clock=lambda: 5.0).rate() == 0.0
