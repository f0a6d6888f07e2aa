"""The cgroup v2 fast path lets the agent's worker call clone3 (for
CLONE_INTO_CGROUP), so the policy the worker loads no longer makes clone3
ENOSYS; the agent stacks a filter of its own on every run's program instead
(CONFIG flag C_GUARD_CLONE3).  The program must see exactly what it saw
before: clone3 absent.  These boxes run on this host's cgroups (v1 here: the
placement itself is tested on v2 in tests/vm), with the worker's policy and
the guard as the v2 backend configures them."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import pytest
from box_fixtures import SyncEngine
from instances import inst

from sandboxd.engine.engine import EngineConfig
from sandboxd.sandbox import seccomp
from sandboxd.sandbox.box import Box
from sandboxd.schema import RunRequest

# syscall(SYS_clone3, NULL, 0): ENOSYS (38) when seccomp hides clone3, EINVAL
# (22: size 0) when the call reaches the kernel.
CLONE3 = (
    "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\nprint(libc.syscall(435, None, 0), ctypes.get_errno())"
)


@pytest.fixture(scope="module")
def eng() -> Iterator[SyncEngine]:
    e = SyncEngine(EngineConfig(instance=inst("-clone3"), pool_size=1))
    yield e
    e.close()


def _clone3_in_box(eng: SyncEngine, guard: bool) -> list[bytes]:
    """What a program sees of clone3 in a box whose worker may call it."""
    pool = eng.engine.pools["host"]
    spec = dataclasses.replace(pool.spec, seccomp=seccomp.compile_default(worker_clone3=True), guard_clone3=guard)
    backend = eng.engine.backend_or_fail
    uid = pool.uids.take()

    async def scenario() -> list[bytes]:
        box = await Box.create(f"clone3-{int(guard)}", uid, spec, backend.create_box(f"clone3-{int(guard)}"))
        try:
            r = await box.run(RunRequest(cmd=["python3", "-S", "-c", CLONE3]))
            assert r.status == "ok", r
            return r.stdout.split()
        finally:
            await box.close()
            await box.cg.remove()

    try:
        return eng.call(scenario())
    finally:
        pool.uids.give(uid)


def test_the_program_finds_clone3_absent_though_the_worker_may_call_it(eng: SyncEngine) -> None:
    assert _clone3_in_box(eng, guard=True) == [b"-1", b"38"]


def test_without_the_guard_the_worker_policy_lets_clone3_through(eng: SyncEngine) -> None:
    # The control: what the guard closes is open without it, so the test above
    # fails if the guard is dropped or stops matching clone3.
    assert _clone3_in_box(eng, guard=False) == [b"-1", b"22"]


def test_the_default_policy_still_hides_clone3(eng: SyncEngine) -> None:
    r = eng.run(["python3", "-S", "-c", CLONE3])
    assert (r.status, r.stdout.split()) == ("ok", [b"-1", b"38"]), r


def test_the_agent_finds_clone_into_cgroup_here_and_then_wants_it_for_every_run(eng: SyncEngine) -> None:
    # The agent's probe at start (clone3 with CLONE_INTO_CGROUP on a closed
    # fd): this kernel (>= 5.7, no seccomp around the daemon) has it.  Such an
    # agent has no cgroup namespace of its own (each run gets one at birth),
    # so a run it would have to start the old way is refused, not started in
    # the daemon's cgroup namespace.
    pool = eng.engine.pools["host"]
    spec = dataclasses.replace(
        pool.spec, seccomp=seccomp.compile_default(worker_clone3=True), clone_into=True, guard_clone3=True
    )
    backend = eng.engine.backend_or_fail
    uid = pool.uids.take()

    async def scenario() -> tuple[bool, str]:
        box = await Box.create("clone3-into", uid, spec, backend.create_box("clone3-into"))
        try:
            wants = box.clone_into
            r = await box.run(RunRequest(cmd=["true"]))  # v1 here: no leaf directory to pass
            return wants, r.status
        finally:
            await box.close()
            await box.cg.remove()

    try:
        assert eng.call(scenario()) == (True, "internal_error")
    finally:
        pool.uids.give(uid)
