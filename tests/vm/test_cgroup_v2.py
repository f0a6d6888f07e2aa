"""sandboxd's engine on real cgroup v2, in a booted Debian 12 VM.

The checks run in the guest (guest_cgroup_v2.py prints what it saw as JSON);
the assertions are here.  The ways the daemon meets cgroup v2:
  root       a root shell at the top of the hierarchy: the backend makes /sandboxd/<instance>
  delegated  a systemd unit with Delegate=yes (how production runs): the daemon moves into
             <unit>/daemon and the instance is <unit>/<instance>, a sibling leaf
  container  the root of a cgroup namespace (docker/k8s on cgroup v2): not the host's root,
             so the same leaf rule as a delegated unit applies
and two it must refuse with a CgroupError: a unit that delegates only some
controllers, and a unit that delegates nothing (its cgroup is systemd's).
Each on the guest's Linux 6.12 (from backports), where a box's group serves
all its runs; `root` also on Debian 12's own 6.1, where the backend's probe
of memory.peak fails and each run gets a leaf below its box.
"""

from __future__ import annotations

import json
import re
import shlex
import time
from typing import Any

import pytest
from build_image import GUEST_PYTHON
from harness import TIMINGS, VM

pytestmark = [pytest.mark.vm, pytest.mark.timeout(3600)]

MiB = 1 << 20
RUN_LEAF = re.compile(r"/vmtest/host-\d+/run\d+$")  # a leaf per run
BOX_GROUP = re.compile(r"/vmtest/host-\d+$")  # the box's group, serving every run


def reuses(kernel: str) -> bool:
    """Linux 6.12+: memory.peak can be reset, so a box's group serves every run."""
    major, minor = (int(x) for x in kernel.split(".")[:2])
    return (major, minor) >= (6, 12)


def unit_name() -> str:
    return f"sandboxd-vmtest-{time.time_ns()}"


def guest_command(src: str, mode: str) -> list[str]:
    script = f"{src}/tests/vm/guest_cgroup_v2.py"
    if mode == "root":
        return [GUEST_PYTHON, script, "root"]  # the script moves itself to the root cgroup
    if mode == "delegated":
        systemd_run = ["systemd-run", "--wait", "--pipe", "--quiet", "--collect", f"--unit={unit_name()}"]
        return [*systemd_run, "-p", "Delegate=yes", GUEST_PYTHON, script, "delegated"]
    assert mode == "container"
    # A fresh cgroup, then a new cgroup + mount namespace with cgroup2 mounted
    # again: the process sees itself at "/", as in a container.
    shell = (
        'mkdir -p "$1" && echo $$ > "$1/cgroup.procs" && shift && '
        "exec unshare --cgroup --mount --fork sh -c "
        '\'umount -l /sys/fs/cgroup && mount -t cgroup2 cgroup2 /sys/fs/cgroup && exec "$0" "$@"\' "$@"'
    )
    return ["sh", "-c", shell, "sh", f"/sys/fs/cgroup/vmtest-ctr-{time.time_ns()}", GUEST_PYTHON, script, "container"]


def guest_run(vm: VM, src: str, mode: str) -> dict[str, Any]:
    t = time.monotonic()
    r = vm.run(guest_command(src, mode), timeout=1200)
    TIMINGS[f"guest script ({mode})"] = time.monotonic() - t
    assert r.returncode == 0, f"guest script failed ({r.returncode}):\n{r.stdout}\n{r.stderr}"
    try:
        res: dict[str, Any] = json.loads(r.stdout)
    except json.JSONDecodeError:
        pytest.fail(f"guest printed no JSON:\n{r.stdout}\n{r.stderr}")
    res["_stderr"] = r.stderr
    return res


def is_idle_pool(groups: list[str]) -> bool:
    """Box groups of a warm pool (at least pool_size=2 of them), and no run leaf."""
    return len(groups) >= 2 and all(re.fullmatch(r"host-\d+", g) for g in groups)


def assert_born_in_leaf(res: dict[str, Any]) -> None:
    """Every run a check recorded (limits included) was placed by clone3, not migrated."""
    runs = [v for v in res.values() if isinstance(v, dict) and isinstance(v.get("cgroup"), dict)]
    runs += [r for v in res.values() if isinstance(v, list) for r in v if isinstance(r, dict) and r.get("cgroup")]
    assert len(runs) >= 10, sorted(res)
    for r in runs:
        assert r["cgroup"]["into"] and r["cgroup"]["born_in"], r


def check_results(res: dict[str, Any], mode: str) -> None:
    ctx = f"[{mode}] guest stderr:\n{res['_stderr']}\nerrors:\n" + "\n".join(res["errors"].values())
    assert not res["errors"], ctx
    reused = reuses(res["kernel"])
    group = BOX_GROUP if reused else RUN_LEAF

    # (a) detection picks v2, and the layout follows the delegation rules
    det = res["detect"]
    assert det["class"] == "V2" and det["version"] == 2
    assert det["reuse"] is reused, det
    for c in ("cpu", "memory", "pids"):
        assert c in det["parent_subtree_control"], det
        assert c in det["root_subtree_control"], det
    if mode == "root":
        assert res["own_cgroup_before"] == "/"
        assert det["delegated"] is None
        assert det["root"] == "/sys/fs/cgroup/sandboxd/vmtest"
    elif mode == "container":
        # The namespace's root is ours, like a delegated unit's cgroup.
        assert res["own_cgroup_before"] == "/"
        assert det["delegated"] == "/sys/fs/cgroup"
        assert det["root"] == "/sys/fs/cgroup/vmtest"
        assert res["own_cgroup_after"] == "/daemon"
        assert det["parent_procs"] == [], det
    else:
        unit = res["own_cgroup_before"]
        assert re.fullmatch(r"/system\.slice/sandboxd-vmtest-\d+\.service", unit), unit
        assert det["delegated"] == f"/sys/fs/cgroup{unit}"
        assert det["root"] == f"/sys/fs/cgroup{unit}/vmtest"
        # No process left in the unit's own cgroup: the daemon moved to the leaf.
        assert res["own_cgroup_after"] == f"{unit}/daemon"
        assert det["parent_procs"] == [], det

    # (b) plain runs
    assert is_idle_pool(res["pool_groups"]), res["pool_groups"]
    for r in res["true"]:
        assert r["status"] == "ok" and r["exit_code"] == 0, r
        assert group.search(r["cgroup"]["path"]) and r["cgroup"]["reused"] is reused, r
    # Born in its leaf with CLONE_NEWCGROUP, the run's cgroup namespace is
    # rooted at the leaf itself (the kernel makes the child's new css_set the
    # namespace's root): the box sees "/" and nothing of the hierarchy, where
    # the old path (a namespace of the agent's) showed "/../vmtest/host-N/runM".
    # The host side saw the same runs in their group (the spy's path).
    for name in ("own_cgroup_in_box", "own_cgroup_first_read"):
        r = res[name]
        assert (r["status"], r["stdout"]) == ("ok", "0::/\n"), r
        assert group.search(r["cgroup"]["path"]), r
    # The v2 fast path: every run was started in its leaf by clone3(CLONE_INTO_CGROUP).
    assert_born_in_leaf(res)
    clone3 = res["clone3_in_box"]
    assert (clone3["status"], clone3["stdout"].split()) == ("ok", ["-1", "38"]), clone3  # ENOSYS
    echo = res["echo"]
    assert (echo["status"], echo["exit_code"], echo["stdout"], echo["stderr"]) == (
        "nonzero_exit",
        3,
        "hello\n",
        "err\n",
    )

    # (c)+(f) memory limit enforced by the run leaf; OOM seen in memory.events
    for name in ("python_200m_under_64m", "c_200m_under_64m"):
        r = res[name]
        cg = r["cgroup"]
        assert r["status"] == "memory_limit", (name, r)
        assert r["signal"] == 9, (name, r)
        assert cg["memory.max"] == str(64 * MiB), cg
        assert cg["memory.swap.max"] == "0" and cg["memory.oom.group"] == "1", cg
        assert cg["memory.events"]["oom_kill"] >= 1 and cg["oom"] is True, cg
        assert 32 * MiB < r["memory"] <= 64 * MiB, (name, r["memory"])
    small = res["c_20m_under_64m"]
    assert small["status"] == "ok" and small["stdout"] == "touched 20 MiB\n", small
    assert small["cgroup"]["memory.events"]["oom_kill"] == 0 and small["cgroup"]["oom"] is False, small
    assert 20 * MiB <= small["memory"] < 64 * MiB, small
    # page cache filled the leaf (memory.peak at the limit) yet no memory_limit
    pc = res["page_cache_48m_under_16m_exit_1"]
    assert (pc["status"], pc["exit_code"]) == ("nonzero_exit", 1), pc
    assert int(pc["cgroup"]["memory.peak"]) > 12 * MiB and pc["memory"] < 4 * MiB, pc
    assert pc["cgroup"]["oom"] is False and pc["cgroup"]["oom_event"] is False, pc
    # kernel memory left by a run (negative dentries) counted in it, not in the next runs
    dent = res["dentries_100k"]
    assert dent["status"] == "ok" and dent["memory"] > 12 * MiB, dent
    after = res["after_dentries"]
    assert all(r["status"] == "ok" for r in after) and max(r["memory"] for r in after) < 2 * MiB, after
    if reused:  # the box's group was replaced by a fresh one (its charges went to the parent)
        same_box = [r for r in after if r["cgroup"]["path"] == dent["cgroup"]["path"]]
        assert same_box and all(r["cgroup"]["inode"] != dent["cgroup"]["inode"] for r in same_box), (dent, after)
    assert all(r["status"] == "ok" for r in res["cache_reads"]), res["cache_reads"]
    ev = res["sleep_cache_evicted"]
    assert ev["status"] == "ok" and ev["memory"] < 4 * MiB, ev
    if reused:  # its peak started at the cache the box's group held
        assert int(ev["cgroup"]["memory.peak"]) > 24 * MiB, ev
    tmpfs = res["tmpfs_40m_under_128m"]
    assert tmpfs["status"] == "ok" and 40 * MiB <= tmpfs["memory"] < 64 * MiB, tmpfs

    # (d) pids limit: forks stop at the limit, and the pool stays usable
    fc = res["fork_counter_procs16"]
    forks, err = (int(x) for x in fc["stdout"].split())
    assert fc["status"] == "ok" and forks == 15 and err == 11, fc  # 16 tasks in all, then EAGAIN
    assert fc["cgroup"]["pids.max"] == "16" and fc["cgroup"]["pids.events"]["max"] >= 1, fc
    bomb = res["fork_bomb_procs16"]
    assert bomb["status"] != "internal_error", bomb
    assert bomb["cgroup"]["pids.events"]["max"] >= 1, bomb
    for r in res["after_bomb_true"]:
        assert r["status"] == "ok", r

    # (e) CPU time counted from the run's cgroup, across all its processes
    for name in ("busy_loop", "busy_loop_2procs"):
        r = res[name]
        assert r["status"] == "time_limit", (name, r)
        assert 0.5 <= r["cpu_time"] <= 1.0, (name, r)
        usage = r["cgroup"]["cpu.stat"]["usage_usec"] / 1e6
        assert abs(usage - r["cpu_time"]) < 0.05, (name, usage, r)

    # (g) nothing left below the instance after close
    assert res["groups_after_close"] == [], res["groups_after_close"]
    assert res["agent_pids_after_close"] == [], res["agent_pids_after_close"]

    # (h) kill -9 of the engine, then a new start sweeps what it left
    crash = res["crash"]
    rep = crash["child_report"]
    assert rep["ready"], crash
    if mode != "root":
        assert rep["cgroup"] == res["own_cgroup_after"], crash  # the restarted daemon finds itself in the leaf
    left = crash["groups_after_kill"]
    assert group.search(rep["run_cgroup"]), crash  # the killed run's group ...
    assert rep["run_cgroup"].split("/vmtest/", 1)[1] in left, crash  # ... was there after the kill
    swept = [m for m in crash["start_log"] if "left by a crashed instance" in m]
    assert swept and int(swept[0].split()[1]) == len(left), crash
    assert is_idle_pool(crash["groups_after_restart"]), crash
    assert crash["run_after_restart"]["status"] == "ok", crash
    assert crash["groups_after_close"] == [], crash
    assert crash["sleep_pids_left"] == [] and crash["agent_pids_left"] == [], crash


@pytest.mark.parametrize(
    ("mode", "kernel"),
    [
        ("root", "6.12"),
        ("delegated", "6.12"),
        ("container", "6.12"),
        ("root", "6.1"),
    ],
)
def test_engine_on_cgroup_v2(request: pytest.FixtureRequest, mode: str, kernel: str) -> None:
    vm: VM = request.getfixturevalue("vm_612" if kernel == "6.12" else "vm")
    src: str = request.getfixturevalue("guest_checkout_612" if kernel == "6.12" else "guest_checkout")
    res = guest_run(vm, src, mode)
    assert res["kernel"].startswith(f"{kernel}."), res["kernel"]
    print(json.dumps({k: v for k, v in res.items() if k != "_stderr"}, indent=1, sort_keys=True)[:20000])
    check_results(res, mode)


DETECT = "from sandboxd.sandbox import cgroups; cgroups.detect('vmtest-refused')"


@pytest.mark.parametrize(
    ("delegate", "expect"),
    [
        pytest.param("memory pids", "lacks controllers ['cpu']", id="partial"),
        pytest.param("no", "not delegated", id="none"),
    ],
)
def test_refuses_cgroup_not_delegated(vm: VM, guest_checkout: str, delegate: str, expect: str) -> None:
    unit = unit_name()
    systemd_run = ["systemd-run", "--wait", "--pipe", "--quiet", "--collect", f"--unit={unit}"]
    cmd = [*systemd_run, "-p", f"Delegate={delegate}", GUEST_PYTHON, "-c", DETECT]
    r = vm.run(cmd, timeout=300)
    print(shlex.join(cmd), r.returncode, r.stdout, r.stderr, sep="\n")
    assert r.returncode != 0
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("sandboxd.sandbox.cgroups.base.CgroupError:") and expect in last, r.stderr


def test_one_shot_cli_from_a_login_shell_delegates_itself(vm: VM, guest_checkout: str) -> None:
    """`sandboxd run` from an ssh session (a scope systemd owns, not delegated)
    re-runs itself in a transient scope with Delegate=yes: stdin, output and
    the exit status pass through, and limits are enforced on cgroup v2."""
    sandboxd = f"{GUEST_PYTHON.rsplit('/', 1)[0]}/sandboxd"
    r = vm.run([sandboxd, "run", "--json", "--", "sh", "-c", "cat; echo $((6 * 7))"], input=b"in\n", timeout=300)
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["status"] == "ok" and res["stdout"] == "in\n42\n", res
    # (Inside the box only /usr is visible: the system python3, not the venv one.)
    r = vm.run([sandboxd, "run", "--json", "--memory", "32", "--", "python3", "-c", "b = bytearray(200 << 20)"])
    assert r.returncode == 1 and json.loads(r.stdout)["status"] == "memory_limit", r.stdout + r.stderr
    # The session scope was left as it was: no leaf moved into it, no controllers turned on.
    own = vm.run(["sh", "-c", "cat /proc/self/cgroup"]).stdout.strip().removeprefix("0::")
    assert not own.endswith("/daemon"), own
