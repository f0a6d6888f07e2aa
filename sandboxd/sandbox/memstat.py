"""What a run's `memory` figure means, and how it is read from its cgroup.

The figure is the run's own memory: anonymous pages, shmem/tmpfs it wrote
(/box, /tmp, /dev/shm are tmpfs), and kernel memory charged to it (page
tables, pipes, sockets, dentries).  Clean page cache of the read-only rootfs
is not counted: whether libjvm.so or node's 99 MB binary is charged to a run
depends on who read it first and what evicted it since (cold or warm cache,
other boxes, the host), and the kernel reclaims it before it fails an
allocation, so it can neither make a run fail nor belong in its figure.

The kernel offers no peak of that sum: memory.max_usage_in_bytes (v1) and
memory.peak (v2) count file pages, memory.stat holds current values only, and
a sampler would cost CPU on every run and still miss short peaks.  So:

    memory = peak(usage) - file LRU pages charged to the group at the end

File pages charged to a group only grow while nothing reclaims them, so the
pages at the end are at least those present at the peak and the difference
is a lower bound of the true peak of the rest.  With reclaim (the limit was
reached), the file pages at the end are at least those left after the last
reclaim, when usage was at the limit: still a lower bound.  It is exact
unless the run charges file pages after its own memory peaked (short of the
exit, which frees anonymous memory and reads nothing).

Where the box's group serves run after run (v1; v2 from Linux 6.12) its peak
is reset at the run's start to the usage then, which holds the page cache of
earlier runs.  Host memory pressure evicting that cache during a run would
come out as the run's memory (a `sleep` showed the 64 MiB evicted), so when
the group's file pages shrank and its limit was never reached (nothing but
the host reclaimed them), the file pages at the start are subtracted instead
(file_at_peak).  Kernel memory an earlier run left that force_empty could not
drop (v1; negative dentries: ~4 MB of 40) is subtracted too.  Measured on the CI
host (Linux 6.18, v1): Java and Node hello world, with the runtime's pages
evicted first, cached in the box's group or cached by another group, give
medians within 0.2 MB of each other (a JVM alone varies by +-0.4 MB).

Verdicts follow the same rule: a run is `memory_limit` when the kernel found
the limit full of memory it could not reclaim (an OOM kill; on v2 also an
`oom` event without a kill), or when it failed after this figure reached the
limit; never because page cache filled the limit, which the kernel just
reclaims (v1 memory.failcnt and v2 memory.events `max` count that reclaim,
so neither can tell a full limit from a busy cache).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

PAGE = os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True, slots=True)
class MemoryUse:
    peak: int  # bytes, clean page cache excluded (see the module docstring)
    oom_kill: bool  # the OOM killer killed a process of the run
    oom: bool  # the limit was full of unreclaimable memory (killed or not)


def keyed(text: str, key: str) -> int:
    """The value of `key` in a flat-keyed cgroup file ("key value" lines)."""
    for line in text.splitlines():
        k, _, v = line.partition(" ")
        if k == key:
            return int(v)
    return 0


def measured(raw_peak: int, file_bytes: int) -> int:
    return max(0, raw_peak - file_bytes)


# A run whose group's usage came this close to its limit met the limit's
# reclaim: a charge fills the group to within its own size (a page, or a huge
# page) of the limit before reclaiming.
LIMIT_REACHED_WITHIN = 4 << 20


def file_at_peak(raw_peak: int, file_end: int, file_start: int, limit: int) -> int:
    """The file bytes to take from a reused group's peak (module docstring).
    file_start: an upper bound of those charged when the peak was reset (0 for a new group)."""
    if raw_peak + LIMIT_REACHED_WITHIN >= limit:
        return file_end  # the limit's reclaim took them: those left are a lower bound
    # Below the limit they only shrink by the host's reclaim, and then those at
    # the start are the ones to take (exact when the peak was the start's usage).
    return max(file_end, file_start)


def v1_file_bytes(numa_stat_fd: int) -> int:
    """File LRU bytes from v1 memory.numa_stat ("file=PAGES N0=..."): the
    shortest file that has them (memory.stat costs twice as much to read).
    shmem/tmpfs pages sit on the anon LRU, so they are not in it."""
    for line in os.pread(numa_stat_fd, 4096, 0).split(b"\n"):
        if line.startswith(b"file="):
            return int(line[5:].split(b" ", 1)[0]) * PAGE
    return 0


def v2_file_bytes(stat: str) -> int:
    """active_file + inactive_file from v2 memory.stat; unlike its `file`
    these exclude shmem (tmpfs pages are on the anon LRU)."""
    total = 0
    for line in stat.splitlines():
        k, _, v = line.partition(" ")
        if k in ("active_file", "inactive_file"):
            total += int(v)
    return total


def v2_event_counts(events: str) -> tuple[int, int]:
    """(oom_kill, oom) counts of a v2 memory.events."""
    got = dict.fromkeys(("oom", "oom_kill"), 0)
    for line in events.splitlines():
        k, _, v = line.partition(" ")
        if k in got:
            got[k] = int(v)
    return got["oom_kill"], got["oom"]


def v2_events(events: str, before: tuple[int, int] = (0, 0)) -> tuple[bool, bool]:
    """(oom_kill, oom) of a v2 memory.events since the counts `before`."""
    kills, ooms = v2_event_counts(events)
    killed = kills > before[0]
    return killed, killed or ooms > before[1]
