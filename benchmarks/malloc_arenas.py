"""glibc's allocator settings against issue 13's heaviest loads: does freed memory come back?

One fresh `sandboxd serve` (memory_budget 256 MiB, pool 2) per variant of
the MALLOC_* environment, each taking hostile_load.py's files-out load (24 x
16 MiB files out, 64 MiB kept) and then its stdin load (24 x 40 MiB at once).
Prints per variant: idle RSS, VmHWM and RSS 3 s after files-out, and the
same after stdin (MiB).

    PYTHONPATH=$PWD .venv/bin/python benchmarks/malloc_arenas.py [variant ...]
"""

from __future__ import annotations

import os
import sys
import time

import hostile_load as hl

MiB = 1 << 20
VARIANTS = {
    "default": {},
    "MALLOC_ARENA_MAX=2": {"MALLOC_ARENA_MAX": "2"},
    "MALLOC_MMAP_THRESHOLD_=1MiB": {"MALLOC_MMAP_THRESHOLD_": str(MiB)},
    "both": {"MALLOC_ARENA_MAX": "2", "MALLOC_MMAP_THRESHOLD_": str(MiB)},
}


def measure(env: dict[str, str]) -> list[int]:
    saved = dict(os.environ)
    os.environ.update(env)  # (the daemon's environment is this process's)
    try:
        d = hl.Daemon(pool=2, budget=256 * MiB)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    try:
        row = [d.proc_status()["VmRSS"]]
        for load in (hl.load_files_out, hl.load_stdin):
            load(d, hl.FULL)
            time.sleep(3)
            st = d.proc_status()
            row += [st["VmHWM"], st["VmRSS"]]
        return [x >> 20 for x in row]
    finally:
        d.stop()


def main() -> None:
    names = sys.argv[1:] or list(VARIANTS)
    print("| variant | idle RSS | VmHWM after files-out | RSS after | VmHWM after stdin | RSS after |")
    print("|---|---|---|---|---|---|")
    for name in names:
        print(f"| {name} | " + " | ".join(str(x) for x in measure(VARIANTS[name])) + " |", flush=True)


if __name__ == "__main__":
    main()
