"""sandboxd as a systemd service, installed by scripts/install-systemd.sh in a
booted Debian 12 VM (systemd 252, pure cgroup v2): the end-to-end test of the
unit in systemd/ and of the cgroup v2 backend under it.

The tests run in file order against one installed service (module fixture),
and its life is part of what is tested: install and start, runs and limits
through the socket, JSON logs, the watchdog, an upgrade (script re-run +
`systemctl restart` with a run in flight), `kill -9` of the main process, and
`systemctl stop`.  After each restart, nothing may be left beyond the new
daemon and its warm pool.  The guest side is guest_systemd.py (JSON out);
the assertions are here.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import time
from pathlib import Path
from typing import Any

import build_image
import pytest
from harness import TIMINGS, VM

from sandboxd.api.inbound import OFFLOAD_WORKERS

pytestmark = [pytest.mark.vm, pytest.mark.timeout(3600)]

REPO = Path(os.environ.get("SANDBOXD_VM_CHECKOUT") or build_image.REPO).resolve()
SRC = "/root/sandboxd-install"  # an operator's checkout, apart from the harness's copy
VENV_PY = "/opt/sandboxd/venv/bin/python"  # the service's venv, made by the script
GUEST_SCRIPT = f"{SRC}/tests/vm/guest_systemd.py"
INSTALL = [f"{SRC}/scripts/install-systemd.sh", "--find-links", build_image.GUEST_WHEELS]
UNIT = "/system.slice/sandboxd.service"
MiB = 1 << 20


def guest(vm: VM, *args: str, timeout: float = 600) -> dict[str, Any]:
    r = vm.run([VENV_PY, GUEST_SCRIPT, *args], timeout=timeout)
    assert r.returncode == 0, f"guest_systemd.py {shlex.join(args)} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}"
    try:
        res: dict[str, Any] = json.loads(r.stdout)
    except json.JSONDecodeError:
        pytest.fail(f"guest_systemd.py {shlex.join(args)} printed no JSON:\n{r.stdout}\n{r.stderr}")
    return res


def snapshot(vm: VM) -> dict[str, Any]:
    return guest(vm, "snapshot", timeout=120)


def journal(vm: VM, since_usec: int | None = None) -> list[str]:
    """The unit's journal as plain messages; since a CLOCK_MONOTONIC time if given."""
    cmd = ["journalctl", "-u", "sandboxd", "-o", "json", "--no-pager"]
    out = []
    for line in vm.run(cmd, timeout=120, check=True).stdout.splitlines():
        entry = json.loads(line)
        if since_usec is not None and int(entry["__MONOTONIC_TIMESTAMP"]) < since_usec:
            continue
        msg = entry.get("MESSAGE")
        if isinstance(msg, list):  # journald gives non-UTF-8 messages as byte arrays
            msg = bytes(msg).decode(errors="replace")
        out.append(str(msg))
    return out


def json_logs(lines: list[str]) -> list[dict[str, Any]]:
    return [json.loads(m) for m in lines if m.startswith("{")]


def busy_boxes(s: dict[str, Any]) -> list[str]:
    """The box groups with a process in them: a run's."""
    return [g for g, pids in s["groups"].items() if pids and re.fullmatch(r"default/host-\d+(/run\d+)?", g)]


def check_clean(s: dict[str, Any]) -> int:
    """The running service holds exactly its daemon and a warm pool: the
    daemon and the agents in the `daemon` leaf, one empty cgroup per box
    below the instance, no run leaf, no stray process.  Returns the pool size."""
    props = s["props"]
    assert (props["ActiveState"], props["SubState"]) == ("active", "running"), props
    main = int(props["MainPID"])
    groups: dict[str, list[int]] = s["groups"]
    boxes = sorted(g for g in groups if g not in (".", "daemon", "default"))
    assert all(re.fullmatch(r"default/host-\d+", g) for g in boxes), groups  # no run leaf, nothing foreign
    assert {".", "daemon", "default"} <= set(groups), groups
    assert all(groups[g] == [] for g in groups if g != "daemon"), groups  # processes only in the leaf
    agents = s["agents"]
    # Per box: the agent the daemon started, the box's PID 1 below it, and
    # PID 1's worker (which starts the runs).
    outer = {a["pid"] for a in agents if a["ppid"] == main}
    inner = {a["pid"] for a in agents if a["ppid"] in outer}
    workers = {a["pid"] for a in agents if a["ppid"] in inner}
    assert len(outer) == len(inner) == len(workers) == len(boxes) >= 2, (agents, boxes)
    assert outer | inner | workers == {a["pid"] for a in agents}, agents  # no agent of an earlier daemon
    assert all(a["cgroup"] == f"{UNIT}/daemon" for a in agents), agents
    # Beside them only the daemon's JSON decode workers (sandboxd.api.decodepool), no stray process.
    extra = set(groups["daemon"]) - ({main} | outer | inner | workers)
    assert set(groups["daemon"]) >= {main} | outer | inner | workers and len(extra) == OFFLOAD_WORKERS, groups
    assert s["sleeps"] == [], s["sleeps"]
    for ctl in ("cpu", "memory", "pids"):
        assert ctl in s["subtree_control"]["."] and ctl in s["subtree_control"]["default"], s["subtree_control"]
    return len(boxes)


def wait_for(vm: VM, pred: Any, timeout: float, what: str) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        s = snapshot(vm)
        if pred(s):
            return s
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout:.0f}s; last snapshot:\n{json.dumps(s, indent=1)}")
        time.sleep(1)


@pytest.fixture(scope="module")
def service(vm: VM) -> dict[str, Any]:
    """This checkout copied into the guest and installed by the script, offline
    from the image's wheelhouse; the service enabled and started."""
    t = time.monotonic()
    vm.copy_in(REPO, SRC)
    r = vm.run(INSTALL, timeout=1200)
    TIMINGS["systemd: install script (venv, unit, start)"] = time.monotonic() - t
    print(r.stdout, r.stderr, sep="\n")
    assert r.returncode == 0, f"install-systemd.sh failed ({r.returncode}):\n{r.stdout}\n{r.stderr}"
    return {"first": snapshot(vm)}


def test_installed_enabled_and_active(vm: VM, service: dict[str, Any]) -> None:
    r = vm.run(["systemctl", "is-enabled", "sandboxd"])
    assert r.stdout.strip() == "enabled", r
    r = vm.run(["systemctl", "is-active", "sandboxd"])
    assert r.stdout.strip() == "active", r
    names = "Type NotifyAccess Delegate KillMode OOMPolicy TasksMax LimitNOFILE Restart NoNewPrivileges ProtectSystem"
    props = vm.run(["systemctl", "show", "sandboxd", *(f"--property={n}" for n in names.split())], check=True)
    got = dict(line.split("=", 1) for line in props.stdout.splitlines())
    assert got == {
        "Type": "notify",
        "NotifyAccess": "main",
        "Delegate": "yes",
        "KillMode": "mixed",
        "OOMPolicy": "continue",
        "TasksMax": "infinity",
        "LimitNOFILE": "65536",
        "Restart": "on-failure",
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
    }, got
    # The group from sysusers.d, the config from the example (not world-readable), the unit's ExecStart.
    files = vm.run(
        "getent group sandboxd && stat -c '%a %U:%G %n' /etc/sandboxd/sandboxd.toml "
        "&& grep -x 'group = \"sandboxd\"' /etc/sandboxd/sandboxd.toml "  # ([socket] group)
        "&& systemctl show -P ExecStart sandboxd",
        check=True,
    ).stdout
    assert "640 root:root /etc/sandboxd/sandboxd.toml" in files, files
    assert "/opt/sandboxd/venv/bin/sandboxd serve --config /etc/sandboxd/sandboxd.toml" in files, files
    assert service["first"]["props"]["NRestarts"] == "0"
    # For the record: systemd's own summary of the hardening.
    print(vm.run(["systemd-analyze", "security", "--no-pager", "sandboxd"], timeout=120).stdout)


def test_cgroup_layout_daemon_leaf_and_instance_subtree(vm: VM, service: dict[str, Any]) -> None:
    s = service["first"]
    assert check_clean(s) == 4  # default pool_size: 2 boxes per vCPU, 2 vCPUs
    assert set(s["groups"]) == {".", "daemon", "default", *(f"default/host-{i}" for i in range(1, 5))}, s["groups"]


def test_socket_is_for_the_sandboxd_group(vm: VM, service: dict[str, Any]) -> None:
    assert service["first"]["socket"] == {"mode": "0o660", "group": "sandboxd"}
    status = (
        "from sandboxd_client import Client\n"
        "with Client('unix:///run/sandboxd/sandboxd.sock') as c: print(sorted(c.status()['pools']))"
    )
    as_nobody = ["setpriv", "--reuid=nobody", "--regid=nogroup"]
    r = vm.run([*as_nobody, "--clear-groups", VENV_PY, "-c", status], timeout=120)
    assert r.returncode != 0 and "PermissionError" in r.stderr, r
    r = vm.run([*as_nobody, "--groups=sandboxd", VENV_PY, "-c", status], timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "['host']", r


def test_runs_and_cgroup_v2_limits_through_the_daemon(vm: VM, service: dict[str, Any]) -> None:
    t = time.monotonic()
    res = guest(vm, "limits", SRC)
    TIMINGS["systemd: runs and limits"] = time.monotonic() - t
    print(json.dumps({k: v for k, v in res.items() if k != "metrics"}, indent=1))
    assert {"bash", "c", "python3"} <= set(res["languages"]), res["languages"]  # what the image has
    assert res["true"]["status"] == "ok", res["true"]
    echo = res["echo"]
    assert (echo["status"], echo["exit_code"], echo["stdout"]) == ("nonzero_exit", 3, "hello\n"), echo
    assert echo["stderr"] == "err\n", echo

    # A run seen from the host: in its own leaf below the unit's instance subtree
    # (this guest's Linux 6.1 cannot reset a reused group's memory.peak), with its limits.
    leaf = res["run_leaf"]
    assert re.fullmatch(r"default/host-\d+/run\d+", leaf["leaf"]) and leaf["comm"] == ["sleep"], leaf
    assert (leaf["memory.max"], leaf["memory.swap.max"], leaf["pids.max"]) == (str(48 * MiB), "0", "8"), leaf
    assert leaf["result"]["status"] == "ok", leaf

    # The unit's hardening leaves a box as the agent makes it: no capabilities, no_new_privs,
    # the seccomp policy (on top of the unit's filters), its own hostname, a readable /etc.
    st = dict(line.split(":\t", 1) for line in res["box_status"]["stdout"].splitlines() if ":\t" in line)
    assert st["CapEff"] == st["CapBnd"] == "0000000000000000", st
    assert (st["NoNewPrivs"], st["Seccomp"]) == ("1", "2"), st
    tail = res["box_status"]["stdout"].splitlines()[-4:]
    assert tail == ["sandbox", "755 /etc", "644 /etc/passwd", "444 /proc/meminfo"], tail
    assert res["wx_mapping"]["stdout"] == "wx ok\n", res["wx_mapping"]  # JITs work: no MemoryDenyWriteExecute
    fo = res["files_out_mode000"]
    assert fo["status"] == "ok" and fo["files"] == [["f", "secret\n", None]], fo

    # Memory: 200 MB under 64 MiB is memory_limit (plain run) and MLE (judged C), OOM-killed.
    mle = res["mle_python"]
    assert (mle["status"], mle["signal"]) == ("memory_limit", 9), mle
    assert 32 * MiB < mle["memory"] <= 64 * MiB, mle
    assert res["mle_c"]["verdict"] == "MLE", res["mle_c"]
    ((verdict, peak, sig),) = res["mle_c"]["tests"]
    assert verdict == "MLE" and sig == 9 and 32 * MiB < peak <= 64 * MiB, res["mle_c"]
    ((verdict, peak, out),) = res["alloc_c_256m"]["tests"]  # the same program fits in 256 MiB
    assert verdict == "AC" and peak >= 200 * MiB and "touched 209715200" in out, res["alloc_c_256m"]
    assert res["unit_oom_kills"] >= 2, res["unit_oom_kills"]  # memory.events oom_kill, counted up the tree

    # Processes: pids.max=16 -> 15 children, then EAGAIN.  CPU: the leaf's usage stops a busy loop.
    assert res["forks_procs16"]["status"] == "ok" and res["forks_procs16"]["stdout"] == "15 11\n", res
    busy = res["busy_loop"]
    assert busy["status"] == "time_limit" and 0.5 <= busy["cpu_time"] <= 1.5, busy
    assert res["aplusb"] == {"verdict": "AC", "tests": ["AC", "AC", "AC"]}, res["aplusb"]

    # No box was lost on the way (a failed reset or a surviving process recycles one).
    pool = res["status"]["pools"]["host"]
    assert pool["recycled"] == 0 and pool["agent_crashes"] == 0 and pool["warm"] == 4, pool

    # Metrics over HTTP on loopback.
    m = res["metrics"]
    assert m['sandboxd_boxes{pool="host",state="warm"}'] == 4, m
    assert m['sandboxd_run_seconds_count{status="memory_limit"}'] >= 1, m
    assert m['sandboxd_verdicts_total{scope="submission",verdict="MLE"}'] >= 1, m

    # OOMPolicy=continue: systemd saw the OOM kills in its subtree and left the daemon alone.
    s = snapshot(vm)
    first = service["first"]["props"]
    assert (s["props"]["InvocationID"], s["props"]["MainPID"]) == (first["InvocationID"], first["MainPID"]), s
    assert any("killed by the OOM killer" in m for m in journal(vm)), "systemd did not notice the OOM kills"
    check_clean(s)


def test_journal_has_json_logs(vm: VM, service: dict[str, Any]) -> None:
    r = vm.run(["journalctl", "-u", "sandboxd", "-o", "cat", "--no-pager"], timeout=120, check=True)
    logs = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    assert logs, r.stdout
    ready = [d for d in logs if d["msg"].startswith("ready in ")]
    assert ready and set(ready[0]) == {"ts", "level", "logger", "msg"}, logs
    assert ready[0]["level"] == "info" and ready[0]["logger"] == "sandboxd", ready
    assert "v2 cgroups" in ready[0]["msg"] and "/run/sandboxd/sandboxd.sock" in ready[0]["msg"], ready


def test_rerun_script_upgrades_in_place_and_leaves_the_daemon_alone(vm: VM, service: dict[str, Any]) -> None:
    """The first half of the documented upgrade: re-running the script is
    idempotent; the running daemon is left alone (it says so) and a local
    edit of the config kept."""
    before = snapshot(vm)
    vm.run("echo '# local edit' >> /etc/sandboxd/sandboxd.toml", check=True)
    t = time.monotonic()
    r = vm.run(INSTALL, timeout=1200)
    TIMINGS["systemd: install script again (upgrade)"] = time.monotonic() - t
    print(r.stdout, r.stderr, sep="\n")
    assert r.returncode == 0, f"{r.stdout}\n{r.stderr}"
    assert "creating" not in r.stdout, r.stdout  # neither the venv nor the config again
    assert "keeps running the previous code until: systemctl restart sandboxd" in r.stdout, r.stdout
    assert vm.run(["tail", "-1", "/etc/sandboxd/sandboxd.toml"]).stdout == "# local edit\n"
    after = snapshot(vm)
    assert after["props"]["InvocationID"] == before["props"]["InvocationID"], after["props"]
    check_clean(after)


def test_watchdog_keeps_a_live_daemon_running(vm: VM, service: dict[str, Any]) -> None:
    s = snapshot(vm)
    props = s["props"]
    assert props["WatchdogUSec"] == "30s", props
    interval = 30_000_000
    # Past two watchdog intervals since it became active (the tests above usually took that long).
    wait = int(props["ActiveEnterTimestampMonotonic"]) + 2 * interval - s["now_usec"]
    TIMINGS["systemd: watchdog wait"] = max(0, wait) / 1e6
    if wait > 0:
        time.sleep(wait / 1e6 + 1)
        s = snapshot(vm)
        props = s["props"]
    first = service["first"]["props"]
    assert (props["InvocationID"], props["MainPID"], props["NRestarts"]) == (
        first["InvocationID"],
        first["MainPID"],
        "0",
    ), props
    assert s["now_usec"] - int(props["ActiveEnterTimestampMonotonic"]) > 2 * interval, props
    # The pings keep coming (every interval/2): the last one is recent.
    assert s["now_usec"] - int(props["WatchdogTimestampMonotonic"]) < interval, props
    check_clean(s)


def test_restart_with_a_run_in_flight_drains_and_leaves_nothing(vm: VM, service: dict[str, Any]) -> None:
    """The second half: `systemctl restart`.  KillMode=mixed: SIGTERM reaches
    only the daemon, which drains, so a run in flight across the restart
    completes; then nothing of the old daemon is left."""
    before = snapshot(vm)
    script = f"""
        {shlex.quote(VENV_PY)} {shlex.quote(GUEST_SCRIPT)} run-sleep 3 > /tmp/inflight.json 2>&1 &
        client=$!
        for i in $(seq 300); do ls -d /sys/fs/cgroup{UNIT}/default/*/run* >/dev/null 2>&1 && break; sleep 0.1; done
        systemctl restart sandboxd
        echo "restart rc=$?"
        wait $client
        echo "client rc=$?"
        cat /tmp/inflight.json
    """
    t = time.monotonic()
    r = vm.run(script, timeout=600)
    TIMINGS["systemd: restart (run in flight)"] = time.monotonic() - t
    assert r.returncode == 0, r
    lines = r.stdout.splitlines()
    assert lines[:2] == ["restart rc=0", "client rc=0"], r.stdout + r.stderr
    res = json.loads(lines[2])
    assert res["status"] == "ok" and res["stdout"] == "slept\n" and res["wall_time"] >= 3, res
    after = snapshot(vm)
    assert after["props"]["InvocationID"] != before["props"]["InvocationID"], after["props"]
    assert after["props"]["NRestarts"] == "0", after["props"]  # a requested restart is no failure
    check_clean(after)
    logs = [d["msg"] for d in json_logs(journal(vm, since_usec=before["now_usec"]))]
    assert "stopping: draining for up to 30 s" in logs and "stopped" in logs, logs
    assert not any("cannot remove" in m for m in logs), logs


def test_kill_9_restarts_and_leaves_nothing_behind(vm: VM, service: dict[str, Any]) -> None:
    """kill -9 of the main process mid-run: Restart=on-failure brings a new
    daemon; the old one's agents, runs and cgroups are gone (systemd kills
    what is left of a failed unit; a new daemon sweeps any cgroup left), and
    the acknowledged runs run again and finish."""
    guest(vm, "start-sleeps", "3", timeout=120)
    before = wait_for(
        vm,
        lambda s: len(s["sleeps"]) == 3 and len(busy_boxes(s)) == 3,
        60,
        "three runs of sleep in their run leaves",
    )
    leaf = re.compile(rf"{re.escape(UNIT)}/default/host-\d+/run\d+")
    assert all(leaf.fullmatch(p["cgroup"]) for p in before["sleeps"]), before
    old = before["props"]
    t = time.monotonic()
    vm.run(["kill", "-9", old["MainPID"]], check=True)
    # The three runs were acknowledged, so the new daemon runs them again from
    # its job store (sandboxd.jobs.store): clean once they are done.
    after = wait_for(
        vm,
        lambda s: (
            s["props"]["ActiveState"] == "active"
            and s["props"]["MainPID"] not in ("0", old["MainPID"])
            and not s["sleeps"]
            and not busy_boxes(s)
        ),
        180,
        "a restarted daemon that has run the re-queued jobs",
    )
    TIMINGS["systemd: kill -9 to active again"] = time.monotonic() - t
    assert int(after["props"]["NRestarts"]) == int(old["NRestarts"]) + 1, after["props"]
    check_clean(after)
    msgs = journal(vm, since_usec=before["now_usec"])
    assert any("Main process exited, code=killed, status=9/KILL" in m for m in msgs), msgs
    print("\n".join(m for m in msgs if "crashed instance" in m or "Killing process" in m))
    # The new daemon serves.
    assert guest(vm, "run-sleep", "0.1")["status"] == "ok"


def test_stop_leaves_no_cgroup_and_no_process(vm: VM, service: dict[str, Any]) -> None:
    before = snapshot(vm)
    t = time.monotonic()
    vm.run(["systemctl", "stop", "sandboxd"], timeout=300, check=True)
    TIMINGS["systemd: stop"] = time.monotonic() - t
    s = snapshot(vm)
    assert (s["props"]["ActiveState"], s["props"]["Result"]) == ("inactive", "success"), s["props"]
    assert s["groups"] == {}, s["groups"]  # the unit's cgroup is gone
    assert s["agents"] == [] and s["sleeps"] == [], s
    assert "socket" not in s, s  # removed by the daemon on its way out
    logs = [d["msg"] for d in json_logs(journal(vm, since_usec=before["now_usec"]))]
    assert logs[-1] == "stopped", logs
