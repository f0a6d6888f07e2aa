"""Warm box build time and the memory an idle warm box costs.

Build time: what the pool pays to add one box, i.e. the box's cgroups
(mkdir + limits) and Box.create (spawn the static agent, unshare the
namespaces, lay out the read-only rootfs, /proc, /dev and the tmpfs work
areas, wait for READY).  N boxes built one after another, then N at once.

Memory of an idle warm box, measured on M boxes, per box, in several honest
views (each printed with what it counts):

  USS          smaps_rollup Private_Clean+Private_Dirty of the outer and the
               inner agent, summed: pages mapped by that process alone.
  box-unique   pages mapped only by this box's two agent processes, however
               many times (/proc/PID/pagemap + /proc/kpagecount): USS plus
               the copy-on-write pages outer and inner still share after
               fork, which the USS sum misses.  The static agent binary's
               text is shared by every box and is not counted.  This is the
               user-space figure compared with the 4 MB target.
  tmpfs        bytes in use on the box's tmpfs mounts (its root with the
               generated /etc files and mount points, /dev, /box, /tmp,
               /dev/shm), from statfs: page cache no process maps.
  all-in       memory.usage_in_bytes of an accounting cgroup the agents are
               started in: user pages, tmpfs pages and kernel memory
               (kmem: page tables, kernel stacks, namespace, mount, dentry
               and inode objects, ...) charged while the box was built.
               Kernel objects not charged to a cgroup are missed; the
               /proc/meminfo delta below is the unfiltered cross-check.
  run cgroup   memory.usage_in_bytes left in the box's own (run) cgroup.

Each view is taken on freshly built boxes and again after one run of
/bin/true and a reset (what a pooled box looks like between jobs).

    .venv/bin/python benchmarks/boxes.py [--quick] [--json] [--builds 20] [--boxes 16]
"""

from __future__ import annotations

import argparse
import array
import asyncio
import contextlib
import dataclasses
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import benchlib as bl

from sandboxd.engine.pool import Pool
from sandboxd.sandbox.box import Box, BoxSpec
from sandboxd.sandbox.cgroups import V1, Backend, BoxCgroup
from sandboxd.schema import RunRequest

TARGET_BUILD_MS = 50.0
TARGET_BOX_BYTES = 4 << 20
PAGE = os.sysconf("SC_PAGE_SIZE")
PFN_MASK = (1 << 55) - 1
PRESENT = 1 << 63
MEMINFO_FIELDS = ("AnonPages", "Shmem", "Slab", "SUnreclaim", "KernelStack", "PageTables", "Percpu")


# ---- building ---------------------------------------------------------------


@dataclasses.dataclass
class Built:
    box: Box
    total_ns: int
    cgroup_ns: int


class Builder:
    """Builds boxes the way Pool._build does, but timed and outside the pool
    (names and uids of their own, so the pool never sees them)."""

    def __init__(self, pool: Pool, backend: Backend) -> None:
        self.pool = pool
        self.backend = backend
        self.seq = 0
        self.live: list[Box] = []

    async def build(self, spec: BoxSpec | None = None) -> Built:
        self.seq += 1
        name = f"bench-{self.seq}"
        uid = self.pool.uids.take()
        t0 = time.perf_counter_ns()
        cg: BoxCgroup | None = None
        try:
            cg = self.backend.create_box(name)
            t1 = time.perf_counter_ns()
            box = await Box.create(name, uid, spec or self.pool.spec, cg)
        except BaseException:
            self.pool.uids.give(uid)
            if cg is not None:
                await cg.remove()
            raise
        t2 = time.perf_counter_ns()
        self.live.append(box)
        return Built(box, t2 - t0, t1 - t0)

    async def close(self, boxes: list[Box]) -> list[int]:
        """Destroy boxes (in parallel, like a pool shutting down); per-box ns."""

        async def one(b: Box) -> int:
            t0 = time.perf_counter_ns()
            try:
                await b.close()
            finally:
                self.pool.uids.give(b.uid)
                if b in self.live:
                    self.live.remove(b)
            return time.perf_counter_ns() - t0

        return list(await asyncio.gather(*(one(b) for b in boxes)))

    async def close_all(self) -> None:
        await asyncio.gather(*(b.close() for b in self.live), return_exceptions=True)
        for b in self.live:
            self.pool.uids.give(b.uid)
        self.live.clear()


async def build_times(bld: Builder, n: int, parallel: bool) -> dict[str, Any]:
    t0 = time.perf_counter()
    if parallel:
        built = list(await asyncio.gather(*(bld.build() for _ in range(n))))
    else:
        built = [await bld.build() for _ in range(n)]
    wall = time.perf_counter() - t0
    closes = await bld.close([b.box for b in built])
    return {
        "mode": "parallel" if parallel else "serial",
        "boxes": n,
        "build_ms": bl.summary_ms([b.total_ns for b in built]),
        "cgroup_ms": bl.summary_ms([b.cgroup_ns for b in built]),
        "wall_s": wall,
        "boxes_per_s": n / wall if wall else 0.0,
        "close_ms": bl.summary_ms(closes),
    }


# ---- memory -----------------------------------------------------------------


def _kv_file(path: str) -> dict[str, int]:
    out: dict[str, int] = {}
    with open(path) as f:
        for line in f:
            k, _, v = line.partition(":")
            parts = v.split()
            if parts and parts[0].isdigit():
                out[k.strip()] = int(parts[0]) * (1024 if parts[1:2] == ["kB"] else 1)
    return out


def agent_pids(box: Box) -> list[int]:
    """[outer, inner]: the inner agent is the outer one's only child."""
    assert box.proc is not None
    outer = box.proc.pid
    kids = Path(f"/proc/{outer}/task/{outer}/children").read_text().split()
    return [outer, *map(int, kids)]


def uss(pid: int) -> tuple[int, int]:
    """(USS, PSS) bytes of one process."""
    r = _kv_file(f"/proc/{pid}/smaps_rollup")
    return r.get("Private_Clean", 0) + r.get("Private_Dirty", 0) + r.get("Private_Hugetlb", 0), r.get("Pss", 0)


def box_unique(pids: list[int], kpagecount_fd: int) -> int:
    """Bytes of the pages mapped by these processes and nothing else: every
    present page's map count (kpagecount) equals the times we saw it."""
    seen: Counter[int] = Counter()
    for pid in pids:
        maps = Path(f"/proc/{pid}/maps").read_text().splitlines()
        fd = os.open(f"/proc/{pid}/pagemap", os.O_RDONLY | os.O_CLOEXEC)
        try:
            for line in maps:
                rng = line.split(None, 1)[0]
                lo, hi = (int(x, 16) for x in rng.split("-"))
                if lo >= 1 << 47:  # [vsyscall]: not in the page tables
                    continue
                raw = os.pread(fd, (hi - lo) // PAGE * 8, lo // PAGE * 8)
                entries = array.array("Q")
                entries.frombytes(raw[: len(raw) - len(raw) % 8])
                for e in entries:
                    if e & PRESENT:
                        pfn = e & PFN_MASK
                        if pfn:  # 0: PFN hidden (not root) or the zero page
                            seen[pfn] += 1
        finally:
            os.close(fd)
    total = 0
    for pfn, n in seen.items():
        raw = os.pread(kpagecount_fd, 8, pfn * 8)
        if len(raw) == 8 and int.from_bytes(raw, sys.byteorder) == n:
            total += PAGE
    return total


def tmpfs_used(inner: int) -> dict[str, int]:
    """Bytes in use on each tmpfs of the box, seen through the inner agent's root."""
    out: dict[str, int] = {}
    for line in Path(f"/proc/{inner}/mountinfo").read_text().splitlines():
        pre, _, post = line.partition(" - ")
        if post.split()[:1] != ["tmpfs"]:
            continue
        mnt = pre.split()[4]
        st = os.statvfs(f"/proc/{inner}/root{mnt}")
        out[mnt] = (st.f_blocks - st.f_bfree) * st.f_frsize
    return out


def read_int(path: Path) -> int | None:
    try:
        return int(path.read_text())
    except (OSError, ValueError):
        return None


class Accounting:
    """One v1 memory cgroup per box that its agents start in, so everything
    charged while the box is built and idles is counted per box.  Made under
    the engine instance's own memory directory: the engine sweeps it even if
    this script dies.  A tiny wrapper moves the process before it execs the
    real agent (same PID, so the agent's parent check still holds)."""

    def __init__(self, backend: Backend, spec: BoxSpec, tmp: Path) -> None:
        assert isinstance(backend, V1)
        self.base = backend.base["memory"]
        self.spec = spec
        self.tmp = tmp
        self.dirs: list[Path] = []

    def spec_for(self, i: int) -> tuple[BoxSpec, Path]:
        d = self.base / f"acct-{i}"
        d.mkdir(exist_ok=True)
        self.dirs.append(d)
        w = self.tmp / f"agent-{i}.sh"
        # env is empty and cwd is / for the agent: everything is spelled out.
        w.write_text(f'#!/bin/sh\necho $$ > {d}/cgroup.procs || exit 125\nexec {self.spec.agent} "$@"\n')
        w.chmod(0o755)
        return dataclasses.replace(self.spec, agent=w), d

    def remove(self) -> None:
        for d in self.dirs:
            with contextlib.suppress(OSError):
                d.rmdir()


@dataclasses.dataclass
class BoxMem:
    uss: int = 0
    pss: int = 0
    unique: int = 0
    tmpfs: int = 0
    acct: int | None = None
    acct_kmem: int | None = None
    run_cg: int | None = None


def measure_box(box: Box, acct_dir: Path | None, kpc_fd: int | None) -> BoxMem:
    pids = agent_pids(box)
    m = BoxMem()
    for pid in pids:
        u, p = uss(pid)
        m.uss += u
        m.pss += p
    if kpc_fd is not None:
        m.unique = box_unique(pids, kpc_fd)
    m.tmpfs = sum(tmpfs_used(pids[-1]).values())
    if acct_dir is not None:
        m.acct = read_int(acct_dir / "memory.usage_in_bytes")
        m.acct_kmem = read_int(acct_dir / "memory.kmem.usage_in_bytes")
    mem = box.cg.dirs.get("memory") or box.cg.dirs.get("box")
    if mem is not None:
        v1 = read_int(mem / "memory.usage_in_bytes")
        m.run_cg = v1 if v1 is not None else read_int(mem / "memory.current")
    return m


def mem_summary(ms: list[BoxMem]) -> dict[str, dict[str, float] | None]:
    out: dict[str, dict[str, float] | None] = {}
    for f in dataclasses.fields(BoxMem):
        vals = [getattr(m, f.name) for m in ms]
        if not vals or any(v is None for v in vals):
            out[f.name] = None
            continue
        xs = sorted(float(v) for v in vals)
        out[f.name] = {"mean": sum(xs) / len(xs), "p50": bl.percentile(xs, 50), "max": xs[-1]}
    return out


async def memory(bld: Builder, backend: Backend, n: int, o: bl.Out) -> dict[str, Any]:
    kpc_fd: int | None
    try:
        kpc_fd = os.open("/proc/kpagecount", os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        o.print(f"  /proc/kpagecount unavailable ({e}): no box-unique figure")
        kpc_fd = None
    acct: Accounting | None = None
    tmp = tempfile.TemporaryDirectory(prefix="sandboxd-bench-")
    if isinstance(backend, V1):
        acct = Accounting(backend, bld.pool.spec, Path(tmp.name))
    else:
        o.print("  cgroup v2: no per-box accounting cgroup (v1 only here); all-in figure skipped")
    boxes: list[tuple[Box, Path | None]] = []
    try:
        before = _kv_file("/proc/meminfo")
        for i in range(n):
            spec, d = acct.spec_for(i) if acct else (None, None)
            built = await bld.build(spec)
            boxes.append((built.box, d))
        await asyncio.sleep(0.2)  # let deferred frees (RCU, workqueues) of the build settle
        after = _kv_file("/proc/meminfo")
        fresh = [measure_box(b, d, kpc_fd) for b, d in boxes]
        req = RunRequest(cmd=["/bin/true"])
        for b, _ in boxes:
            r = await b.run(req)
            if r.status != "ok":
                raise RuntimeError(f"run in box {b.name}: {r.status} {r.message}")
            await b.reset()
        used = [measure_box(b, d, kpc_fd) for b, d in boxes]
        tmpfs_detail = tmpfs_used(agent_pids(boxes[0][0])[-1])
    finally:
        await bld.close([b for b, _ in boxes])
        if acct:
            acct.remove()
        tmp.cleanup()
        if kpc_fd is not None:
            os.close(kpc_fd)
    delta = {k: (after.get(k, 0) - before.get(k, 0)) / n for k in MEMINFO_FIELDS}
    return {
        "boxes": n,
        "fresh": mem_summary(fresh),
        "after_run_reset": mem_summary(used),
        "meminfo_delta_per_box": delta,
        "tmpfs_detail_first_box": tmpfs_detail,
    }


# ---- report -----------------------------------------------------------------


def kb(x: float | None) -> str:
    return "-" if x is None else f"{x / 1024:.0f} KiB"


def print_report(o: bl.Out, m: dict[str, Any], builds: list[dict[str, Any]], mem: dict[str, Any] | None) -> None:
    o.print(f"Machine: {bl.machine_line(m)}")
    if builds:
        o.print()
        o.print("Box build (cgroup + agent spawn + namespaces + rootfs, until READY), ms:")
        o.print()
        rows = []
        for b in builds:
            s, c, cl = b["build_ms"], b["cgroup_ms"], b["close_ms"]
            rows.append(
                [
                    f"{b['boxes']} {b['mode']}",
                    bl.fmt_ms(s["p50"]),
                    bl.fmt_ms(s["p90"]),
                    bl.fmt_ms(s["max"]),
                    bl.fmt_ms(c["p50"]),
                    f"{b['boxes_per_s']:.0f}",
                    bl.fmt_ms(cl["p50"]),
                ]
            )
        o.print(bl.markdown_table(["boxes", "p50", "p90", "max", "of it cgroups p50", "boxes/s", "destroy p50"], rows))
    if mem:
        o.print()
        o.print(f"Memory per idle warm box (mean of {mem['boxes']} boxes):")
        o.print()
        rows = []
        labels = {
            "uss": "USS: outer+inner agent Private_* (smaps_rollup)",
            "pss": "PSS: outer+inner agent",
            "unique": "box-unique user pages (pagemap+kpagecount)",
            "tmpfs": "tmpfs in use (root, /dev, /box, /tmp, /dev/shm)",
            "acct": "all-in: accounting cgroup usage (user + tmpfs + kmem)",
            "acct_kmem": "  of it kernel memory (kmem)",
            "run_cg": "left in the box's run cgroup",
        }
        for k, label in labels.items():
            f, u = mem["fresh"].get(k), mem["after_run_reset"].get(k)
            rows.append([label, kb(f["mean"] if f else None), kb(u["mean"] if u else None)])
        o.print(bl.markdown_table(["what is counted", "fresh", "after a run + reset"], rows))
        o.print()
        d = mem["meminfo_delta_per_box"]
        o.print(
            "Cross-check, /proc/meminfo growth per box while building (whole machine, noisy): "
            + ", ".join(f"{k} {v / 1024:+.0f} KiB" for k, v in d.items())
        )
        o.print(
            "tmpfs detail (first box, after run + reset): "
            + ", ".join(f"{k} {v // 1024} KiB" for k, v in mem["tmpfs_detail_first_box"].items())
        )
        o.print("Not counted anywhere above: the daemon's per-box Python objects and fds (a few KiB).")


def targets(builds: list[dict[str, Any]], mem: dict[str, Any] | None) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    serial = next((b for b in builds if b["mode"] == "serial"), None)
    if serial:
        v = serial["build_ms"]["p50"]
        out.append({"target": "warm box built in <= 50 ms (serial p50)", "value": f"{v:.1f} ms", "met": v <= 50})
    if mem:
        u = mem["after_run_reset"].get("unique") or mem["after_run_reset"].get("uss")
        if u:
            v = u["mean"]
            out.append(
                {
                    "target": "<= 4 MB unique memory per idle warm box (box-unique user pages)",
                    "value": f"{v / 1024:.0f} KiB",
                    "met": v <= TARGET_BOX_BYTES,
                }
            )
        a = mem["after_run_reset"].get("acct")
        if a:
            v = a["mean"]
            out.append(
                {
                    "target": "(all-in, incl. kernel memory, for information) <= 4 MB",
                    "value": f"{v / 1024:.0f} KiB",
                    "met": v <= TARGET_BOX_BYTES,
                }
            )
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="few boxes (CI smoke test)")
    p.add_argument("--json", action="store_true", help="print one JSON line on stdout (human text on stderr)")
    p.add_argument("--builds", type=int, default=20, help="boxes built serially, then in parallel (default 20)")
    p.add_argument("--boxes", type=int, default=16, help="idle boxes measured for memory (default 16)")
    p.add_argument("--no-memory", action="store_true", help="build times only")
    p.add_argument("--instance", default="bench-boxes", help="sandboxd instance name")
    p.add_argument("--check-targets", action="store_true", help="exit 3 when a target is missed")
    a = p.parse_args(argv)
    if a.quick:
        a.builds, a.boxes = 4, 2
    return a


async def amain(a: argparse.Namespace) -> int:
    o, m = bl.begin(a.json)
    # pool_size=1: the engine needs a pool for its spec, uids and
    # backend; one idle box is noise the deltas below do not see.
    eng = await bl.start_engine(o, a.instance, 1)
    if eng is None:
        return 2
    builds: list[dict[str, Any]] = []
    mem: dict[str, Any] | None = None
    try:
        pool = eng.pools["host"]
        assert eng.backend is not None
        bld = Builder(pool, eng.backend)
        try:
            await bld.close([(await bld.build()).box])  # warm the agent binary and dentry caches
            builds.append(await build_times(bld, a.builds, parallel=False))
            builds.append(await build_times(bld, a.builds, parallel=True))
            if not a.no_memory:
                mem = await memory(bld, eng.backend, a.boxes, o)
        finally:
            await bld.close_all()
    finally:
        await eng.close()
    print_report(o, m, builds, mem)
    tg = targets(builds, mem)
    o.print()
    o.print("Targets (issue):")
    for t in tg:
        o.print(f"  - {t['target']}: {t['value']} -> {'met' if t['met'] else 'MISSED'}")
    o.json(
        bl.clean_floats(
            {"bench": "boxes", "machine": m, "quick": a.quick, "builds": builds, "memory": mem, "targets": tg}
        )
    )
    if a.check_targets and any(not t["met"] for t in tg[:2]):
        return 3
    return 0


def main(argv: list[str] | None = None) -> int:
    return bl.run_main(amain(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
