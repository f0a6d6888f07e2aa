"""Many runs of one box (cgroup v1: the same groups serve them all, their
fds opened once per box and handed to the agent with every RUN): each run
lands in the box's groups under its own limits, gets its own CPU time, and
sees only its stdio, also after a reset handed the box to a new worker (a
run used the network)."""

from __future__ import annotations

import pytest
from box_fixtures import SyncEngine

from sandboxd.sandbox import cgroups
from sandboxd.sandbox.box import Box
from sandboxd.schema import Limits, MiB, RunRequest

pytestmark = pytest.mark.skipif(
    not isinstance(cgroups.detect("pytest-probe", create=False), cgroups.V1),
    reason="cgroup v1's placement (/proc/self/cgroup per controller); v2 runs in tests/vm only",
)

_FDS = RunRequest(cmd=["sh", "-c", "ls /proc/$$/fd"])
_CGROUP = RunRequest(cmd=["cat", "/proc/self/cgroup"])
# A thread the program starts after exec: the child joined through `tasks`,
# which moves the calling thread (the whole single-threaded child), and what
# it creates later must land in the same three groups.
_THREAD_SRC = "import threading\nthreading.Thread(target=lambda: print(open('/proc/thread-self/cgroup').read()))"
_THREAD_SRC += ".start()"
_THREAD_CGROUP = RunRequest(cmd=["python3", "-S", "-c", _THREAD_SRC])
_BURN = RunRequest(cmd=["sh", "-c", "while :; do :; done"], limits=Limits(cpu_time=0.2, wall_time=20))
_TRUE = RunRequest(cmd=["true"])
_ALLOC = "b = b'x' * (48 << 20)\n"
_FORKS = "for i in 1 2 3 4 5 6; do sleep 0.2 & done; wait"
_TCP = "import socket\nl = socket.socket(); l.bind(('127.0.0.1', 0)); l.listen()\n"
_TCP += "socket.create_connection(l.getsockname())"


def _agent_pids(box: Box) -> tuple[int, int]:
    """(PID 1 of the box, its worker) as the host sees them."""
    assert box.proc is not None
    inner = _first_child(box.proc.pid)
    return inner, _first_child(inner)


def _first_child(pid: int) -> int:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return int(f.read().split()[0])


def _check_run_placement_and_accounting(engine: SyncEngine, box: Box, seen: list[str]) -> None:
    fds = engine.call(box.run(_FDS))  # (none of the agent's: cgroup files, sockets, /box)
    assert (fds.status, fds.stdout.split()) == ("ok", [b"0", b"1", b"2"]), fds
    for req in (_CGROUP, _THREAD_CGROUP):
        cg = engine.call(box.run(req))
        assert cg.status == "ok", cg
        lines = dict(line.split(":", 2)[1:] for line in cg.stdout.decode().splitlines() if line)
        for c in ("memory", "pids", "cpuacct"):
            assert lines[c].endswith(f"/{box.cg.name}"), (req.cmd, c, lines)
    burn = engine.call(box.run(_BURN))
    assert burn.status == "time_limit" and burn.message != "wall time limit", burn
    assert burn.cpu_time >= 0.2, burn
    # Its own CPU time, not the group's running total (cpuacct.usage is never reset).
    t = engine.call(box.run(_TRUE))
    assert t.status == "ok" and t.cpu_time < 0.1, t
    # Each run's own limit, lowered and raised again on the same groups.
    low = engine.call(box.run(RunRequest(cmd=["python3", "-S", "-c", _ALLOC], limits=Limits(memory=24 * MiB))))
    assert low.status == "memory_limit", low
    high = engine.call(box.run(RunRequest(cmd=["python3", "-S", "-c", _ALLOC], limits=Limits(memory=128 * MiB))))
    assert high.status == "ok" and high.memory >= 48 * MiB, high
    for procs, forked in ((3, False), (64, True)):
        r = engine.call(box.run(RunRequest(cmd=["sh", "-c", _FORKS], limits=Limits(procs=procs))))
        assert (r.status == "ok") == forked and (b"fork" in r.stderr.lower()) != forked, r
    seen.append(str(_agent_pids(box)[1]))


def test_many_runs_of_one_box_keep_placement_limits_and_cpu_time(engine: SyncEngine) -> None:
    box = engine.call(engine.engine.box())
    seen: list[str] = []
    try:
        for i in range(8):
            _check_run_placement_and_accounting(engine, box, seen)
            engine.call(box.reset())
            if i % 3 == 1:
                # A run that used the network: the reset hands over to a new
                # worker, forked by PID 1, which must place and measure runs as well.
                tcp = engine.call(box.run(RunRequest(cmd=["python3", "-S", "-c", _TCP]), reset_behind=True))
                assert tcp.status == "ok", tcp
                engine.call(box.reset())
        assert len(set(seen)) > 1, seen  # (the workers did change)
        assert box.broken is None and box.alive
    finally:
        engine.engine.release(box)
