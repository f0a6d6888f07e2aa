"""Large specs and results go into the job store without copies of them (sandboxd.jobs.blobs, issue 13).

On lead a spec was bound to its INSERT: SQLite's transient copy of it and the
record built from it held twice its size at once beside the caller's bytes
(82 MiB of peak RSS for a 40 MiB spec; with 2 senders of 40 MiB stdin the
daemon's peak went past its memory budget).  Written in place a chunk at a
time, it costs a chunk's worth.  On a real SQLite file, measured on this
process's own peak RSS (VmHWM, reset first): a memory bound, not a timing.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

from sandboxd.engine.budget import nbytes
from sandboxd.jobs import resultblob
from sandboxd.jobs.resultblob import SPLIT_FROM
from sandboxd.jobs.store import JobStore, NewJob, Split, Stored
from sandboxd.schema import FileOut, JobInfo, RunResult

MiB = 1 << 20


def _hwm() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))


def _reset_hwm() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _add(s: JobStore, r: NewJob) -> asyncio.Future[Stored | None]:
    fut: asyncio.Future[Stored | None] = asyncio.get_running_loop().create_future()
    s.add(r, lambda ok, val: fut.set_result(val) if ok else fut.set_exception(val))
    return fut


def test_a_large_spec_is_stored_without_copies_and_reads_back_whole(tmp_path: Path) -> None:
    size = 32 * MiB
    big, small = os.urandom(size), b"small spec"  # (random: no page of it is shared or zero)
    path = tmp_path / "j.sqlite3"

    async def scenario() -> int:
        s = JobStore(path, 600)
        await _add(s, NewJob("warm", "run", small, time.time()))  # (the connection's own caches, first)
        _reset_hwm()
        before = _hwm()
        await _add(s, NewJob("big", "run", big, time.time()))
        grown = _hwm() - before
        await _add(s, NewJob("small", "run", small, time.time()))
        await s.close()
        return grown

    grown = asyncio.run(scenario())
    assert grown < size // 4, f"storing a {size // MiB} MiB spec grew the peak by {grown / MiB:.1f} MiB"
    again = JobStore(path, 600)
    jobs, lost = again.recover(lambda st: b"")
    assert [(j.id, j.spec) for j in jobs] == [("warm", small), ("big", big), ("small", small)] and lost == []
    asyncio.run(again.close())


def test_a_large_result_is_saved_without_copies_and_read_back_in_one(tmp_path: Path) -> None:
    # On lead2 `info` was a column of `jobs` (not its last): the bound blob and the
    # record SQLite built from it grew the peak by twice the result (66 MiB for 32).
    size = 32 * MiB
    big = os.urandom(size)
    path = tmp_path / "j.sqlite3"

    async def scenario() -> tuple[int, int]:
        s = JobStore(path, 600)
        for jid in ("warm", "big"):
            await _add(s, NewJob(jid, "run", b"spec", time.time()))
        saved: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        s.finish("warm", "done", b"small", time.time(), lambda ok, val: saved.set_result(val))
        await saved
        _reset_hwm()
        before = _hwm()
        saved = asyncio.get_running_loop().create_future()
        s.finish("big", "done", big, time.time(), lambda ok, val: saved.set_result((ok, val)))
        assert await saved == (True, (len(b"spec") + size,))
        written = _hwm() - before
        _reset_hwm()
        before = _hwm()
        got = await s.get("big")
        read = _hwm() - before
        assert got is not None and got.info == big and got.state == "done"
        del got
        await s.close()
        return written, read

    written, read = asyncio.run(scenario())
    assert written < size // 4, f"saving a {size // MiB} MiB result grew the peak by {written / MiB:.1f} MiB"
    # (one copy: the bytes returned; a SELECT held SQLite's value of it beside them)
    assert read < size + size // 4, f"reading it back grew the peak by {read / MiB:.1f} MiB"


def test_a_large_result_is_split_written_from_its_own_bytes_and_put_back(tmp_path: Path) -> None:
    # On lead2 the JobInfo was encoded whole first (a copy of every byte of its
    # files, on the event loop) and that copy bound to the UPDATE (two more).
    size = 16 * MiB
    files = [FileOut(f"f{i}", content=os.urandom(size)) for i in range(2)] + [FileOut("gone", error="no such file")]
    res = RunResult(status="ok", stdout=b"small", stderr=os.urandom(SPLIT_FROM), files=files)
    info = JobInfo("big", "run", "done", res, created_at=1.0, finished_at=2.0)
    path = tmp_path / "j.sqlite3"

    async def scenario() -> tuple[int, int, JobInfo]:
        s = JobStore(path, 600)
        await _add(s, NewJob("big", "run", b"spec", time.time()))
        _reset_hwm()
        before = _hwm()
        data = resultblob.encode(info, nbytes(res))
        assert isinstance(data, Split) and len(data.pieces) == 3  # (stdout is small: in the head)
        saved: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        s.finish("big", "done", data, time.time(), lambda ok, val: saved.set_result((ok, val)))
        assert await saved == (True, (len(b"spec") + len(data),))
        del data
        written = _hwm() - before
        _reset_hwm()
        before = _hwm()
        got = await s.get("big")
        assert got is not None and got.info is not None
        back = resultblob.decode(got.info)
        del got
        read = _hwm() - before
        await s.close()
        return written, read, back

    written, read, back = asyncio.run(scenario())
    assert back == info
    assert written < size // 4, f"saving {2 * size // MiB} MiB of files grew the peak by {written / MiB:.1f} MiB"
    assert read < 2 * size + size // 2, f"reading them back grew the peak by {read / MiB:.1f} MiB"
    small = JobInfo("s", "run", "done", RunResult(status="ok", stdout=b"x" * 100))
    assert isinstance(resultblob.encode(small, nbytes(small.result)), bytes)  # (small: one encode, no walk)
