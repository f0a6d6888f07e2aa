"""The memory budget and the compile cache under any sequence of reservations,
releases and cache puts (sandboxd/engine/budget.py): the books always balance,
the limit holds, and a refusal evicts nothing.  (Worked examples on a fake
clock: tests/unit/test_budget.py.)"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sandboxd.engine.budget import BudgetFull, ByteLRU, Hold, MemoryBudget

LIMIT = 100
# (operation, a, b): reserve a bytes; release hold number a; put key a of b bytes; get key a.
ops = st.lists(
    st.tuples(st.sampled_from(["reserve", "release", "put", "get"]), st.integers(0, 60), st.integers(1, 30)),
    max_size=40,
)


def check_books(b: MemoryBudget, cache: ByteLRU[int, int]) -> None:
    assert b.total == sum(b.used.values()) <= b.limit
    assert cache.bytes == b.used["compile_cache"] <= cache.cap
    assert sum(hold.n for _, hold in cache._items.values()) == cache.bytes


def reserve(b: MemoryBudget, cache: ByteLRU[int, int], holds: list[Hold], n: int) -> None:
    before, cached = b.total, dict(cache._items)
    try:
        holds.append(b.reserve("requests", n))
    except BudgetFull:
        # Refused only when even an empty cache would not make room, and then the cache is kept.
        assert before + n - b.limit > cache.bytes and cache._items == cached
        return
    assert b.used["requests"] == sum(h.n for h in holds)


@settings(max_examples=100, deadline=None, database=None)
@given(ops)
def test_the_books_balance_whatever_happens(seq: list[tuple[str, int, int]]) -> None:
    b = MemoryBudget(LIMIT)
    cache = ByteLRU[int, int](b, "compile_cache", 0.5)
    holds: list[Hold] = []
    for op, a, size in seq:
        if op == "reserve":
            reserve(b, cache, holds, a + 1)
        elif op == "release" and holds:
            holds.pop(a % len(holds)).release()
        elif op == "put":
            was = cache.get(a)
            if cache.put(a, -a, size):
                assert was is None and cache.get(a) == -a
            else:  # already there (kept as it was), or it did not fit
                assert cache.get(a) == was
        elif op == "get":
            assert cache.get(a) in (None, -a)
        check_books(b, cache)
    for h in holds:
        h.release()
    assert b.total == cache.bytes


def test_a_full_budget_with_no_cache_refuses() -> None:
    b = MemoryBudget(LIMIT)
    b.reserve("requests", LIMIT)
    with pytest.raises(BudgetFull):
        b.reserve("requests", 1)
    assert b.refused == 1 and b.total == LIMIT
