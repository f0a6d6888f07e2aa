"""An opt-in watchdog of the event loop (`log.stall_ms`): what held it, logged.

/healthz answers late when one turn of the loop is long, and which work made
it long is not visible from outside: a profile sums time, it does not say
what the single worst turns were.  Here a task on the loop notes the time
every TICK, and a thread of its own looks every TICK: while the loop has not
ticked for `stall_ms`, it takes the loop thread's Python stack
(sys._current_frames), and when the loop ticks again it logs the stall's
length and the stacks seen in it (most frequent first).  A long C call that
holds the GIL holds this thread too: it then sees the stack as the call
returns (the frame that made it), and says how late it woke itself.  Garbage
collections longer than GC_NOTE are logged too (gc.callbacks): a collection
of the oldest generation over a large heap stalls the loop like any work.

Off by default: the stacks cost GIL time of their own while a stall lasts.
"""

from __future__ import annotations

import asyncio
import collections
import gc
import logging
import sys
import threading
import time
import traceback
from typing import Any

log = logging.getLogger("sandboxd.stall")

TICK = 0.005  # s between the loop's ticks, and between the watcher's looks
GC_NOTE = 0.005  # s: collections at least this long are logged
DEPTH = 12  # innermost frames kept of a stack
IDLE = frozenset({"wait", "_wait_for_tstate_lock", "select", "poll", "get", "accept", "recv", "_worker", "sleep"})


class StallWatch:
    def __init__(self, stall_ms: float) -> None:
        self.limit = stall_ms / 1000
        self.beat = time.monotonic()
        self.loop_thread = threading.get_ident()
        self.stop = threading.Event()
        self.gc_start = 0.0
        self.stacks: collections.Counter[str] = collections.Counter()  # of the stall going on
        self.late = 0.0  # the watcher's own worst oversleep in it: the GIL or a core held from it
        self.task: asyncio.Task[None] | None = None
        self.thread = threading.Thread(target=self._watch, name="stall-watch", daemon=True)

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._tick())
        self.thread.start()
        gc.callbacks.append(self._gc)
        log.info("watching the event loop for turns over %.0f ms", self.limit * 1000)

    def close(self) -> None:
        self.stop.set()
        if self.task is not None:
            self.task.cancel()
        if self._gc in gc.callbacks:
            gc.callbacks.remove(self._gc)

    async def _tick(self) -> None:
        # The loop thread's CPU time beside the wall time: a turn long in
        # wall time but not in CPU is the process waiting for a core (or the
        # GIL), not work on the loop.
        # The whole process's beside it: a stall with neither is this process
        # waiting for a core; with the process's but not the loop's, another
        # thread of it held the GIL (a long C call: the watcher, which needs
        # the GIL too, then takes no stack).
        cpu, proc = time.thread_time(), time.process_time()
        while True:
            await asyncio.sleep(TICK)
            now, was, cpu0, proc0 = time.monotonic(), self.beat, cpu, proc
            self.beat, cpu, proc = now, time.thread_time(), time.process_time()
            if now - was - TICK >= self.limit:
                stacks, self.stacks = self.stacks, collections.Counter()
                self._report(now - was - TICK, cpu - cpu0, proc - proc0, self.late, stacks)
                self.late = 0.0

    def _gc(self, phase: str, info: dict[str, Any]) -> None:
        now = time.monotonic()
        if phase == "start":
            self.gc_start = now
        elif now - self.gc_start >= GC_NOTE:
            log.warning(
                "gc: generation %s took %.1f ms (%s collected)",
                info.get("generation"),
                (now - self.gc_start) * 1000,
                info.get("collected"),
            )

    def _stack(self) -> str:
        frames = sys._current_frames()
        frame = frames.get(self.loop_thread)
        lines = traceback.format_list(traceback.extract_stack(frame)[-DEPTH:]) if frame is not None else ["?\n"]
        # The other threads' innermost frames, those not waiting for work:
        # one of them may hold the GIL (or a lock) the loop waits for.
        me = threading.get_ident()
        for tid, f in frames.items():
            if tid in (me, self.loop_thread) or f.f_code.co_name in IDLE:
                continue
            where = " < ".join(
                f"{x.name} ({x.filename.rsplit('/', 1)[-1]}:{x.lineno})"
                for x in reversed(traceback.extract_stack(f)[-3:])
            )
            lines.append(f"  [thread {tid}] {where}\n")
        return "".join(lines)

    def _watch(self) -> None:
        while not self.stop.is_set():
            t = time.monotonic()
            time.sleep(TICK)
            now = time.monotonic()
            if now - self.beat >= self.limit:
                self.late = max(self.late, now - t - TICK)
                self.stacks[self._stack()] += 1

    def _report(self, took: float, cpu: float, proc: float, late: float, stacks: collections.Counter[str]) -> None:
        seen = "\n".join(f"-- seen {n}x:\n{s}" for s, n in stacks.most_common(4))
        log.warning(
            "event loop held %.0f ms: CPU %.0f ms on the loop, %.0f ms in the process (the watcher woke up"
            " to %.0f ms late); stacks:\n%s",
            took * 1000,
            cpu * 1000,
            proc * 1000,
            late * 1000,
            seen or "(none taken)",
        )
