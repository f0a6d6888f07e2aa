"""What a waited keyed run's durable record costs the job store (issue 18),
by how many records share a batch: WAL frames (4 KiB pages) written per
record and the loop's time per record (JobStore.record, its callback, the
batch's transaction: inline on the loop, as in the daemon), on a real file
that already holds --rows keyed records, with uuid4 keys and the daemon's
own job ids (random: each record touches its own leaf of the id and key
indexes, the rest is appended).  Also a key lookup (JobStore.by_key) of a key
no row holds, with the store's key filter and without it (the SELECT).

    PYTHONPATH=$PWD .venv/bin/python benchmarks/store_record.py [--rows 20000] [--n 400]
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import tempfile
import time
import uuid

from sandboxd.jobs.keyfilter import KeyFilter
from sandboxd.jobs.store import JobStore, NewJob

INFO = b"x" * 150  # about a /bin/true run's JobInfo
# (Job ids as Service._new_job makes them: secrets.token_urlsafe(12).)


async def record(store: JobStore, n: int) -> None:
    """n records queued in one loop iteration: one batch."""
    loop = asyncio.get_running_loop()
    futs = []
    for _ in range(n):
        fut: asyncio.Future[bool] = loop.create_future()
        job = NewJob(
            secrets.token_urlsafe(12),
            "run",
            b"",
            time.time(),
            key=str(uuid.uuid4()),
            fingerprint=secrets.token_bytes(32),
        )
        store.record(job, "done", INFO, time.time(), lambda ok, _v, fut=fut: fut.set_result(ok))
        futs.append(fut)
    store.flush_due(1.0)  # (now, not after LATER: the batch is what was queued)
    assert all(await asyncio.gather(*futs))


def frames(store: JobStore) -> int:
    """WAL frames since the last truncating checkpoint."""
    return int(store.db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[1])


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=20000, help="keyed records in the store before measuring")
    ap.add_argument("--n", type=int, default=400, help="records per batch size")
    a = ap.parse_args()
    store = JobStore(f"{tempfile.mkdtemp(prefix='sandboxd-bench-record-')}/j.sqlite3", 3600)
    for _ in range(a.rows // 10):
        await record(store, 10)
    print(f"{a.rows} keyed records in the store; {a.n} more per batch size")
    print("| records per batch | WAL frames per record | µs per record (loop) |")
    print("|---|---|---|")
    for size in (1, 2, 5, 10):
        store.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        t = time.perf_counter_ns()
        for _ in range(a.n // size):
            await record(store, size)
        dt = (time.perf_counter_ns() - t) / (a.n // size * size) / 1000
        print(f"| {size} | {frames(store) / (a.n // size * size):.2f} | {dt:.0f} |")
    keys = [str(uuid.uuid4()) for _ in range(5000)]
    t = time.perf_counter_ns()
    for k in keys:
        assert store.by_key(k) is None
    filtered = (time.perf_counter_ns() - t) / len(keys) / 1000
    store.keys.filter = KeyFilter(bits_log2=3)  # (every bit set below: each lookup goes to the SELECT)
    for i in range(64):
        store.keys.filter.add(str(i))
    t = time.perf_counter_ns()
    for k in keys:
        assert store.by_key(k) is None
    selected = (time.perf_counter_ns() - t) / len(keys) / 1000
    print(f"by_key of a new key: {filtered:.2f} µs with the filter, {selected:.2f} µs by the SELECT (hot loop)")
    await store.close()


if __name__ == "__main__":
    asyncio.run(main())
