"""`log.stall_ms` (sandboxd.app.stallwatch): a turn of the event loop held
past it is logged with the loop thread's stack while it was held."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest
import uvloop

from sandboxd.app.stallwatch import StallWatch


def hold_the_loop_in_a_named_function() -> None:
    time.sleep(0.3)  # (a blocking call on the loop: the kind of turn the watch is for)


async def _held() -> None:
    watch = StallWatch(30)
    watch.start()
    try:
        await asyncio.sleep(0.05)
        hold_the_loop_in_a_named_function()
        await asyncio.sleep(0.1)  # (the next ticks: the stall is reported as it ends)
    finally:
        watch.close()


def test_a_held_loop_is_logged_with_the_stack_that_held_it(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="sandboxd.stall"):
        uvloop.run(_held())
    held = [r.getMessage() for r in caplog.records if "event loop held" in r.getMessage()]
    # (A loaded host may add stalls of its own: waits for a core, no stack of ours.)
    ours = [m for m in held if "hold_the_loop_in_a_named_function" in m]
    assert len(ours) == 1, held
    assert "CPU" in ours[0] and "in the process" in ours[0]


def test_it_is_off_by_default() -> None:
    from sandboxd.config import DEFAULT

    assert DEFAULT.log.stall_ms == 0
