"""Runs INSIDE the VM: sandboxd's engine against a real cgroup v2 hierarchy.

    python guest_cgroup_v2.py root        # moves itself to the root cgroup first
    python guest_cgroup_v2.py delegated   # in a systemd unit with Delegate=yes
    python guest_cgroup_v2.py container   # at the root of a cgroup namespace
    (python guest_cgroup_v2.py child      # internal: the engine that gets kill -9'd)

Prints one JSON object on stdout (logs go to stderr); the host-side test
asserts on it.  Every check records what it saw, and an exception in one check
is recorded (with its traceback) without hiding the others.  The run's
cgroup files are read right before sandboxd reads them itself (and removes a
per-run leaf), by read-only wrappers around V2.prepare and V2.finish: in a
box group that serves every run (Linux 6.12+), the counters are given as
this run's increase over what prepare() left.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import select
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import uvloop

from sandboxd.engine.engine import Engine, EngineConfig
from sandboxd.sandbox import cgroups
from sandboxd.sandbox.memstat import MemoryUse
from sandboxd.schema import FileIn, Limits, RunRequest, RunResult

INSTANCE = "vmtest"
MiB = 1 << 20
CG = Path("/sys/fs/cgroup")

ALLOC_C = r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
int main(int argc, char **argv) {
    size_t mb = argc > 1 ? strtoul(argv[1], 0, 10) : 200;
    char *p = malloc(mb << 20);
    if (!p) { puts("malloc failed"); return 3; }
    for (size_t i = 0; i < (mb << 20); i += 4096) p[i] = 1;  /* touch every page */
    printf("touched %zu MiB\n", mb);
    return 0;
}
"""

FORK_COUNTER = """
import os, time
n = 0
try:
    while True:
        if os.fork() == 0:
            time.sleep(30)
            os._exit(0)
        n += 1
except OSError as e:
    print(n, e.errno, flush=True)
"""

# Negative dentries outlive the run, charged to its group (SLAB_ACCOUNT):
# names new to the dcache, one dentry each.
DENTRIES = "import os, sys\np = '/usr/' + sys.argv[1]\nfor i in range(100000):\n    os.path.exists(f'{p}{i}')\n"
CGROUP_FIRST = "print(open('/proc/self/cgroup').read().strip())"
# syscall(SYS_clone3, NULL, 0): ENOSYS (38) where seccomp hides it, EINVAL
# (22, size 0) where it reaches the kernel.
CLONE3_ERRNO = (
    "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\nprint(libc.syscall(435, None, 0), ctypes.get_errno())"
)

log = logging.getLogger("guest")
finished: list[dict[str, Any]] = []  # what each run's group showed right before finish() read it
_orig_prepare, _orig_finish = cgroups.V2.prepare, cgroups.V2.finish
COUNTERS = ("memory.events", "pids.events", "cpu.stat")
_before: dict[str, dict[str, int]] = {}  # the counters as the last prepare() left them


def _kv(path: Path) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in path.read_text().splitlines():
        k, _, v = line.partition(" ")
        if v.strip().lstrip("-").isdigit():
            out[k] = int(v)
    return out


def _prepare_spy(
    self: cgroups.V2, box: cgroups.BoxCgroup, memory: int, procs: int, into: bool = False
) -> cgroups.RunCgroup:
    run = _orig_prepare(self, box, memory, procs, into)
    where = run.path or box.dirs["box"]
    _before.clear()
    _before.update({name: _kv(where / name) for name in COUNTERS})
    return run


def _finish_spy(
    self: cgroups.V2, box: cgroups.BoxCgroup, run: cgroups.RunCgroup, reset_done: bool = False
) -> MemoryUse:
    where = run.path or box.dirs["box"]  # the run's leaf, or the box's group that serves every run
    # into: sandboxd asked for clone3(CLONE_INTO_CGROUP); born_in: the agent did it.
    seen: dict[str, Any] = {"path": str(where), "reused": run.path is None, "into": run.into, "born_in": run.born_in}
    seen["inode"] = os.stat(where).st_ino  # (a box's group renewed between runs: the same path, a new inode)
    for name in ("memory.max", "memory.swap.max", "memory.oom.group", "pids.max", "memory.peak"):
        try:
            seen[name] = (where / name).read_text().strip()
        except OSError as e:
            seen[name] = f"error: {e}"
    if run.path is None:  # the peak since prepare()'s reset: readable through its fd only
        seen["memory.peak"] = os.pread(box._fds["memory.peak"], 64, 0).decode().strip()
    for name in (*COUNTERS, "memory.stat"):
        try:
            now = _kv(where / name)
            base = _before.get(name, {}) if name in COUNTERS else {}
            seen[name] = {k: v - base.get(k, 0) for k, v in now.items()}
        except OSError as e:
            seen[name] = f"error: {e}"
    mem = _orig_finish(self, box, run, reset_done)
    seen["peak"], seen["oom"], seen["oom_event"] = mem.peak, mem.oom_kill, mem.oom
    finished.append(seen)
    return mem


cgroups.V2.prepare = _prepare_spy  # type: ignore[method-assign]
cgroups.V2.finish = _finish_spy  # type: ignore[method-assign]


class Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def own_cgroup() -> str:
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        if line.startswith("0::"):
            return line[3:]
    return "?"


def tree(root: Path) -> list[str]:
    """Every cgroup below root, relative to it."""
    if not root.exists():
        return []
    return sorted(str(Path(dp).relative_to(root)) for dp, _, _ in os.walk(root) if Path(dp) != root)


def agent_pids() -> list[int]:
    out = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                if os.readlink(p / "exe").startswith("/var/lib/sandboxd/agent-"):
                    out.append(int(p.name))
            except OSError:
                pass
    return out


def pids_with_cmdline(argv: list[str]) -> list[int]:
    want = ("\0".join(argv) + "\0").encode()
    out = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                if (p / "cmdline").read_bytes() == want:
                    out.append(int(p.name))
            except OSError:
                pass
    return out


def summary(r: RunResult) -> dict[str, Any]:
    return {
        "status": r.status,
        "exit_code": r.exit_code,
        "signal": r.signal,
        "cpu_time": r.cpu_time,
        "wall_time": r.wall_time,
        "memory": r.memory,
        "stdout": r.stdout.decode(errors="replace")[-2000:],
        "stderr": r.stderr.decode(errors="replace")[-2000:],
        "message": r.message,
    }


async def run(eng: Engine, cmd: list[str], **kw: Any) -> dict[str, Any]:
    files = kw.pop("files_in", [])
    n = len(finished)
    r = await eng.run(RunRequest(cmd=cmd, files_in=files, limits=Limits(**kw)))
    out = summary(r)
    out["cgroup"] = finished[-1] if len(finished) > n else None
    return out


def config() -> EngineConfig:
    return EngineConfig(instance=INSTANCE, pool_size=2)


# -- the checks ---------------------------------------------------------------


async def check_detect(res: dict[str, Any]) -> None:
    res["own_cgroup_before"] = own_cgroup()
    b = cgroups.detect(INSTANCE)
    assert isinstance(b, cgroups.V2), type(b)
    res["own_cgroup_after"] = own_cgroup()
    parent = b.parent
    res["detect"] = {
        "class": type(b).__name__,
        "version": b.version,
        "root": str(b.root),
        "parent": str(parent),
        "delegated": str(b.delegated) if b.delegated else None,
        "reuse": b.reuse,
        "parent_procs": (parent / "cgroup.procs").read_text().split(),
        "parent_subtree_control": (parent / "cgroup.subtree_control").read_text().split(),
        "root_subtree_control": (b.root / "cgroup.subtree_control").read_text().split(),
        "mount_subtree_control": (CG / "cgroup.subtree_control").read_text().split(),
    }


async def check_runs(eng: Engine, res: dict[str, Any]) -> None:
    ok = [await run(eng, ["/bin/true"]) for _ in range(3)]
    res["true"] = ok
    res["own_cgroup_in_box"] = await run(eng, ["cat", "/proc/self/cgroup"])
    # The program's first read of /proc/self/cgroup, before anything else ran
    # in it (the fast path puts it there at birth, the old path before exec).
    res["own_cgroup_first_read"] = await run(eng, ["python3", "-S", "-c", CGROUP_FIRST])
    # The worker may call clone3 for CLONE_INTO_CGROUP; the program may not.
    res["clone3_in_box"] = await run(eng, ["python3", "-S", "-c", CLONE3_ERRNO])
    res["echo"] = await run(eng, ["sh", "-c", "echo hello; echo err >&2; exit 3"])


async def check_memory(eng: Engine, res: dict[str, Any]) -> None:
    py_hog = "s = b'x' * (200 << 20); print(len(s))"
    res["python_200m_under_64m"] = await run(eng, ["python3", "-c", py_hog], memory=64 * MiB, cpu_time=20, wall_time=90)
    # A C program (built here, outside the box) touching every page of 200 MB.
    src = Path("/tmp/vmtest-alloc.c")
    src.write_text(ALLOC_C)
    subprocess.run(["cc", "-O1", "-o", "/tmp/vmtest-alloc", str(src)], check=True)
    exe = FileIn("alloc", Path("/tmp/vmtest-alloc").read_bytes(), executable=True)
    res["c_200m_under_64m"] = await run(
        eng, ["./alloc", "200"], files_in=[exe], memory=64 * MiB, cpu_time=20, wall_time=90
    )
    exe2 = FileIn("alloc", Path("/tmp/vmtest-alloc").read_bytes(), executable=True)
    res["c_20m_under_64m"] = await run(
        eng, ["./alloc", "20"], files_in=[exe2], memory=64 * MiB, cpu_time=20, wall_time=90
    )
    # Page cache filling the limit is no memory limit (memory.peak counts it):
    # read >= 48 MiB of rootfs files, evicted first, under 16 MiB, then fail.
    # (96 MiB under 32 MiB took over 20 s of CPU under TCG: reclaim is slow there.)
    files = cold_rootfs_files(48 * MiB)
    res["page_cache_48m_under_16m_exit_1"] = await run(
        eng, ["sh", "-c", 'cat "$@" > /dev/null; exit 1', "sh", *files], memory=16 * MiB, cpu_time=60, wall_time=120
    )
    # Kernel memory a run leaves is not in the next runs' figures: a new leaf
    # each run, or (a box group serving every run) a fresh group once over
    # the threshold.  The pool hands out its 2 boxes in turn.
    res["dentries_100k"] = await run(
        eng, ["python3", "-c", DENTRIES, f"no-such-{os.urandom(8).hex()}"], memory=256 * MiB, cpu_time=60, wall_time=120
    )
    res["after_dentries"] = [await run(eng, ["/bin/true"]) for _ in range(3)]
    # Page cache a box's group holds from earlier runs, evicted by the host
    # during a run, is not that run's memory: each box reads half of the
    # files (cold), then a sleep, on either box, sees its cache go.
    files = cold_rootfs_files(96 * MiB)
    for half in (files[0::2], files[1::2]):
        res.setdefault("cache_reads", []).append(
            await run(
                eng, ["sh", "-c", 'cat "$@" > /dev/null', "sh", *half], memory=512 * MiB, cpu_time=60, wall_time=120
            )
        )

    async def evict_soon() -> None:
        await asyncio.sleep(1.5)
        cold_rootfs_files(96 * MiB)

    evicting = asyncio.create_task(evict_soon())
    res["sleep_cache_evicted"] = await run(eng, ["sleep", "4"], memory=512 * MiB, wall_time=60)
    await evicting
    # tmpfs (/box) is memory: counted.
    res["tmpfs_40m_under_128m"] = await run(
        eng, ["dd", "if=/dev/zero", "of=/box/big", "bs=1M", "count=40"], memory=128 * MiB, cpu_time=20, wall_time=90
    )


def cold_rootfs_files(total: int) -> list[str]:
    """Regular files under /usr/lib adding up to `total` bytes, dropped from the page cache."""
    out: list[str] = []
    got = 0
    for dp, _, names in os.walk("/usr/lib"):
        for name in sorted(names):
            p = Path(dp) / name
            if p.is_symlink() or not p.is_file() or p.stat().st_size < 1 << 20:
                continue
            fd = os.open(p, os.O_RDONLY | os.O_CLOEXEC)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            os.close(fd)
            out.append(str(p))
            got += p.stat().st_size
            if got >= total:
                return out
    raise AssertionError(f"only {got} bytes of files under /usr/lib")


async def check_pids(eng: Engine, res: dict[str, Any]) -> None:
    res["fork_counter_procs16"] = await run(eng, ["python3", "-c", FORK_COUNTER], procs=16, cpu_time=20, wall_time=60)
    res["fork_bomb_procs16"] = await run(
        eng, ["sh", "-c", "f() { f | f & }; f; sleep 3"], procs=16, cpu_time=5, wall_time=8
    )
    await asyncio.sleep(1)
    res["after_bomb_true"] = [await run(eng, ["/bin/true"]) for _ in range(4)]
    res["after_bomb_host_processes"] = sum(1 for p in Path("/proc").iterdir() if p.name.isdigit())


async def check_cpu(eng: Engine, res: dict[str, Any]) -> None:
    res["busy_loop"] = await run(eng, ["sh", "-c", "while :; do :; done"], cpu_time=0.5)
    res["busy_loop_2procs"] = await run(
        eng, ["sh", "-c", "while :; do :; done & while :; do :; done"], cpu_time=0.5, wall_time=10
    )


async def child_main() -> None:
    """Start an engine, begin a long run, report, and wait to be killed."""
    eng = await Engine.start(config())
    assert isinstance(eng.backend, cgroups.V2)
    task = asyncio.ensure_future(eng.run(RunRequest(cmd=["sleep", "61.5"], limits=Limits(cpu_time=100, wall_time=300))))
    root = eng.backend.root
    run_cgroup = ""
    for _ in range(600):
        sleeping = pids_with_cmdline(["sleep", "61.5"])
        if sleeping:
            # (the host's view: the box's own cgroup namespace shows "/")
            run_cgroup = Path(f"/proc/{sleeping[0]}/cgroup").read_text().strip().removeprefix("0::")
            break
        await asyncio.sleep(0.1)
    report = {"ready": True, "pid": os.getpid(), "cgroup": own_cgroup(), "groups": tree(root), "run_cgroup": run_cgroup}
    print(json.dumps(report), flush=True)
    await task  # never finishes: we get SIGKILLed


async def check_crash_sweep(res: dict[str, Any]) -> None:
    out: dict[str, Any] = {}
    res["crash"] = out
    child = subprocess.Popen(
        [sys.executable, __file__, "child"],
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    assert child.stdout is not None
    ready, _, _ = select.select([child.stdout], [], [], 300)
    line = child.stdout.readline() if ready else ""
    out["child_report"] = json.loads(line) if line.strip() else {"ready": False}
    backend = cgroups.detect(INSTANCE)
    out["groups_before_kill"] = tree(backend.root)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    time.sleep(1)
    out["groups_after_kill"] = tree(backend.root)
    out["procs_left_in_groups"] = {
        g: (backend.root / g / "cgroup.procs").read_text().split() for g in out["groups_after_kill"]
    }
    cap = Capture()
    logging.getLogger("sandboxd").addHandler(cap)
    try:
        eng = await Engine.start(config())
    finally:
        logging.getLogger("sandboxd").removeHandler(cap)
    out["start_log"] = cap.messages
    out["groups_after_restart"] = tree(backend.root)
    out["run_after_restart"] = await run(eng, ["/bin/true"])
    await eng.close()
    out["groups_after_close"] = tree(backend.root)
    out["sleep_pids_left"] = pids_with_cmdline(["sleep", "61.5"])
    out["agent_pids_left"] = agent_pids()


async def main(mode: str) -> dict[str, Any]:
    res: dict[str, Any] = {"mode": mode, "kernel": os.uname().release, "errors": {}}
    if mode == "root":
        # A plain root shell at the top of the hierarchy (as in a container or a
        # non-systemd init): leave the ssh session's scope first.
        (CG / "cgroup.procs").write_text("0")

    async def step(name: str, fn: Callable[[], Awaitable[None]]) -> None:
        t = time.monotonic()
        try:
            await fn()
        except BaseException as e:
            res["errors"][name] = "".join(traceback.format_exception(e))
            log.error("%s failed: %s", name, e)
        res.setdefault("seconds", {})[name] = round(time.monotonic() - t, 2)

    await step("detect", lambda: check_detect(res))
    eng: Engine | None = None

    async def start() -> None:
        nonlocal eng
        eng = await Engine.start(config())

    await step("start", start)
    if eng is not None:
        e = eng
        res["pool_groups"] = tree(e.backend.root) if e.backend else []
        await step("runs", lambda: check_runs(e, res))
        await step("memory", lambda: check_memory(e, res))
        await step("pids", lambda: check_pids(e, res))
        await step("cpu", lambda: check_cpu(e, res))

        async def close() -> None:
            backend = e.backend
            assert isinstance(backend, cgroups.V2)
            await e.close()
            res["groups_after_close"] = tree(backend.root)
            res["root_exists_after_close"] = backend.root.exists()
            res["parent_exists_after_close"] = backend.parent.exists()
            await asyncio.sleep(0.5)
            res["agent_pids_after_close"] = agent_pids()

        await step("close", close)
    await step("crash", lambda: check_crash_sweep(res))
    res["own_cgroup_end"] = own_cgroup()
    return res


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="guest %(levelname)s %(name)s: %(message)s")
    mode = sys.argv[1] if len(sys.argv) > 1 else "root"
    if mode == "child":
        uvloop.run(child_main())
    else:
        print(json.dumps(uvloop.run(main(mode)), indent=1, sort_keys=True))
