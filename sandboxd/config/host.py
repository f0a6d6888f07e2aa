"""Defaults derived from the host: warm boxes from its cores, the jobs' memory
budget from its RAM.  Here (not in the engine) so that the configuration,
which every process reads, the coordinator included, needs no engine code."""

from __future__ import annotations

import os

MiB = 1 << 20
# Default budget: a quarter of the host's memory, at least 256 MiB and at most
# 8 GiB.  The rest belongs to the boxes (pool_size runs of up to their memory
# limit each) and the page cache the runtimes are read from.  The floor lets
# a small host still hold a few maximal (64 MiB) requests; beyond the cap more
# budget only lets more work wait in the queue (latency, not throughput).
DEFAULT_SHARE, DEFAULT_FLOOR, DEFAULT_CAP = 0.25, 256 * MiB, 8 << 30


def default_pool_size() -> int:
    # Two warm boxes per core keep every core busy while the others reset.
    return max(2, 2 * (os.cpu_count() or 1))


def default_memory_budget(meminfo: str = "/proc/meminfo") -> int:
    total = 0
    try:
        with open(meminfo) as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    total = int(line.split()[1]) * 1024
                    break
    except OSError:
        pass
    return int(min(DEFAULT_CAP, max(DEFAULT_FLOOR, total * DEFAULT_SHARE)))
