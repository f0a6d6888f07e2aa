"""ansible/ for real: two booted Debian 12 VMs (cgroup v2, systemd) set up by
site.yml over ssh, jobs through the coordinator, then rolling-upgrade.yml
while a stream of jobs flows: no job fails or is lost.

judge1 runs a judge daemon and the coordinator, judge2 a judge daemon; the
fleet's Redis runs on this host's loopback, which the guests reach as
10.0.2.2 (qemu user networking).  The controller reaches the coordinator on a
forwarded loopback port, as rolling-upgrade.yml's drain/undrain calls do.
"""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import build_image
import pytest
from harness import TIMINGS, VM

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))
from fleet_util import Redis  # noqa: E402

# Playbooks against emulated (TCG) guests take minutes, not the suite-wide 300 s.
pytestmark = [pytest.mark.vm, pytest.mark.timeout(1800)]
ANSIBLE = Path(sys.executable).parent / "ansible-playbook"
COORD_PORT = 7080


@dataclass
class Rollout:
    vms: dict[str, VM]
    redis: Redis
    token: str
    inventory: Path
    work: Path
    log: list[str] = field(default_factory=list)

    @property
    def coordinator(self) -> str:
        return f"http://127.0.0.1:{self.vms['judge1'].forwards[COORD_PORT]}"

    def api(self, method: str, path: str, body: Any = None, timeout: float = 120) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            self.coordinator + path,
            data=data,
            method=method,
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {self.token}"},
        )
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"null")

    def playbook(self, name: str, extra: dict[str, Any] | None = None) -> subprocess.CompletedProcess[str]:
        args = [str(ANSIBLE), "-i", str(self.inventory), str(REPO / "ansible" / name)]
        if extra:
            args += ["-e", json.dumps(extra)]
        env = {
            **os.environ,
            "ANSIBLE_CONFIG": str(REPO / "ansible" / "ansible.cfg"),
            "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_HOST_KEY_CHECKING": "False",
            "ANSIBLE_LOCAL_TEMP": str(self.work / "ansible-tmp"),
            "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
        }
        t = time.monotonic()
        r = subprocess.run(args, capture_output=True, text=True, env=env, timeout=1800, cwd=REPO)
        TIMINGS[f"ansible-playbook {name} #{len(self.log) + 1}"] = time.monotonic() - t
        self.log.append(r.stdout + r.stderr)
        if r.returncode != 0:
            r.stderr += self.diagnose()
        return r

    def diagnose(self) -> str:
        """The services' own view, for a failed play's message."""
        out = []
        for name, vm in self.vms.items():
            j = vm.run("journalctl --no-pager -n 40 -u sandboxd -u sandboxd-coordinator", timeout=60)
            out.append(f"\n--- journal of {name} ---\n{j.stdout}{j.stderr}")
        return "".join(out)


def recap(out: str) -> dict[str, dict[str, int]]:
    """PLAY RECAP lines: host -> {ok, changed, unreachable, failed, ...}."""
    hosts = {}
    for m in re.finditer(r"^(\S+)\s+:\s+((?:\w+=\d+\s*)+)$", out, re.M):
        hosts[m.group(1)] = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", m.group(2))}
    return hosts


def version_copy(work: Path, version: str) -> Path:
    """This checkout with another version number: what an upgrade installs."""
    dst = work / f"src-{version}"
    shutil.copytree(
        REPO,
        dst,
        ignore=shutil.ignore_patterns(".git", ".venv", "__pycache__", "*.egg-info", "build", ".*_cache"),
    )
    pp = dst / "pyproject.toml"
    text = pp.read_text()
    assert 'version = "0.1.0"' in text
    pp.write_text(text.replace('version = "0.1.0"', f'version = "{version}"', 1))
    return dst


@pytest.fixture(scope="module")
def rollout(vm_image: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rollout]:
    work = tmp_path_factory.mktemp("ansible")
    redis = Redis()
    # Their ceiling: the module's four playbooks at their 1800 s timeouts, not the
    # default hour (at load 10-13 the module outlived it, and qemu was killed mid-upgrade).
    life = 4 * 1800 + 600
    vms = {
        "judge1": VM(vm_image, memory_mb=1536, max_lifetime=life, forward_ports=(COORD_PORT,)),
        "judge2": VM(vm_image, memory_mb=1536, max_lifetime=life),
    }
    # Booted in parallel from threads that live as long as the VMs: qemu's
    # wrapper dies with the thread that started it (PR_SET_PDEATHSIG).
    pool = ThreadPoolExecutor(2)
    try:
        t = time.monotonic()
        list(pool.map(lambda v: v.boot(timeout=300), vms.values()))
        TIMINGS["boot two VMs"] = time.monotonic() - t
        token = secrets.token_hex(12)
        key = build_image.build() / "id_ed25519"
        inventory = {
            "all": {
                "vars": {
                    "ansible_user": "root",
                    "ansible_host": "127.0.0.1",
                    "ansible_ssh_private_key_file": str(key),
                    "ansible_ssh_common_args": "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null "
                    "-o IdentitiesOnly=yes -o ControlMaster=auto -o ControlPersist=300",
                    "ansible_python_interpreter": "/usr/bin/python3",
                    "sandboxd_fleet": f"redis://10.0.2.2:{redis.port}/0",
                    "sandboxd_pip_find_links": build_image.GUEST_WHEELS,
                    "sandboxd_coordinator_url": f"http://127.0.0.1:{vms['judge1'].forwards[COORD_PORT]}",
                    "sandboxd_coordinator_token": token,
                    # Self-tests of every language cost minutes under emulation; the health check runs a program.
                    # results_ttl: the rollout under emulation takes longer than the default 600 s,
                    # and the test reads every job's result after it.
                    "sandboxd_config": {
                        "pool_size": 2,
                        "selftest": False,
                        "drain_timeout": 20.0,
                        "results_ttl": 3600.0,
                    },
                },
                "children": {
                    "coordinators": {
                        "hosts": {
                            "judge1": {
                                "ansible_port": vms["judge1"].port,
                                "coordinator_config": {
                                    "http": f"0.0.0.0:{COORD_PORT}",
                                    "http_token": token,
                                    "results_ttl": 3600.0,
                                },
                            }
                        }
                    },
                    "judges": {
                        "hosts": {
                            "judge1": {"ansible_port": vms["judge1"].port},
                            "judge2": {"ansible_port": vms["judge2"].port},
                        }
                    },
                },
            }
        }
        inv = work / "inventory.yml"
        inv.write_text(json.dumps(inventory, indent=1))  # JSON is YAML
        yield Rollout(vms, redis, token, inv, work)
    finally:
        for v in vms.values():
            v.shutdown()
        pool.shutdown()
        redis.stop()


def _hosts(r: Rollout) -> dict[str, dict[str, Any]]:
    st, hosts = r.api("GET", "/v1/hosts")
    assert st == 200, hosts
    return {h["id"]: h for h in hosts}


def _wait_done(r: Rollout, job: str, timeout: float = 300) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        st, res = r.api("GET", f"/v1/jobs/{job}?wait=20")
        assert st == 200, res
        if res["state"] not in ("queued", "running") or time.monotonic() > deadline:
            return dict(res)


def test_site_yml_sets_up_the_fleet(rollout: Rollout) -> None:
    r = rollout.playbook("site.yml")
    assert r.returncode == 0, r.stdout[-5000:] + r.stderr[-6000:]
    hosts = _hosts(rollout)
    assert set(hosts) == {"judge1", "judge2"}, hosts
    assert all(h["capacity"] == 2 and not h["drained"] and h["version"] == "0.1.0" for h in hosts.values()), hosts
    # Jobs through the coordinator, run on both hosts (cgroup v2 under systemd).
    st, res = rollout.api("POST", "/v1/runs", {"cmd": ["/bin/echo", "fleet"]})
    assert st == 200 and base64.b64decode(res["stdout"]) == b"fleet\n", res
    src = b'#include <stdio.h>\nint main(){int a,b;scanf("%d %d",&a,&b);printf("%d\\n",a+b);}\n'
    sub = {"lang": "c", "source": base64.b64encode(src).decode(), "tests": [{"input": "MSAy", "expected": "Mw=="}]}
    st, res = rollout.api("POST", "/v1/submissions", sub, timeout=300)
    assert st == 200 and res["verdict"] == "AC", res
    # Judge0 and Piston clients through the deployed coordinator.
    j0 = {"source_code": "print(input())", "language_id": 71, "stdin": "vm", "expected_output": "vm"}
    st, res = rollout.api("POST", "/judge0/submissions?wait=true&fields=status_id,stdout", j0, timeout=300)
    assert st == 201 and res == {"stdout": "vm\n", "status_id": 3}, res
    ex = {"language": "c", "version": "*", "files": [{"content": '#include <stdio.h>\nint main(){puts("OK");}'}]}
    st, res = rollout.api("POST", "/piston/api/v2/execute", ex, timeout=300)
    assert st == 200 and res["run"]["stdout"] == "OK\n" and res["compile"]["code"] == 0, res
    jobs = [rollout.api("POST", "/v1/runs?wait=false", {"cmd": ["/bin/sleep", "0.5"]})[1]["job"] for _ in range(8)]
    assert {_wait_done(rollout, j)["host"] for j in jobs} == {"judge1", "judge2"}
    # The units are what systemd runs, with the settings given.
    for name, vm in rollout.vms.items():
        out = vm.run(["systemctl", "is-active", "sandboxd"]).stdout.strip()
        assert out == "active", name
    assert rollout.vms["judge1"].run(["systemctl", "is-active", "sandboxd-coordinator"]).stdout.strip() == "active"
    conf = rollout.vms["judge2"].run(["cat", "/etc/sandboxd/sandboxd.toml"]).stdout
    # The inventory's flat keys (pool_size) are in their sections: the file has one spelling per setting.
    assert 'host_id = "judge2"' in conf and "pool_size = 2" in conf and "\n[engine]\n" in conf, conf


def test_site_yml_again_changes_nothing(rollout: Rollout) -> None:
    r = rollout.playbook("site.yml")
    assert r.returncode == 0, r.stdout[-6000:]
    rc = recap(r.stdout)
    assert {h: rc[h]["changed"] for h in ("judge1", "judge2")} == {"judge1": 0, "judge2": 0}, r.stdout[-4000:]


def test_rolling_upgrade_under_a_stream_of_jobs(rollout: Rollout) -> None:
    src = version_copy(rollout.work, "0.1.1")
    stop = threading.Event()
    jobs: list[str] = []
    refused: list[Any] = []

    def stream() -> None:
        while not stop.is_set():
            try:
                st, res = rollout.api("POST", "/v1/runs?wait=false", {"cmd": ["/bin/sh", "-c", "sleep 0.3; echo ok"]})
                if st == 202:
                    jobs.append(res["job"])
                else:
                    refused.append((st, res))
            except OSError as e:
                refused.append(repr(e))
            time.sleep(0.3)

    th = threading.Thread(target=stream, daemon=True)
    th.start()
    try:
        time.sleep(3)
        r = rollout.playbook("rolling-upgrade.yml", {"sandboxd_src": str(src)})
        time.sleep(3)
    finally:
        stop.set()
        th.join()
    assert r.returncode == 0, r.stdout[-8000:] + r.stderr[-3000:]
    assert not refused, refused[:5]
    assert len(jobs) > 20, len(jobs)
    results = [_wait_done(rollout, j) for j in jobs]
    bad = [x for x in results if x["state"] != "done" or x["result"]["status"] != "ok"]
    assert not bad, bad[:3]
    assert {x["host"] for x in results} == {"judge1", "judge2"}
    hosts = _hosts(rollout)
    assert {h["version"] for h in hosts.values()} == {"0.1.1"}, hosts
    assert not any(h["drained"] for h in hosts.values())
    # The order of events in the play: drained, idle, upgraded, checked, undrained, one host at a time.
    out = r.stdout
    for host in ("judge1", "judge2"):
        assert re.search(rf"TASK \[Undrain the host\][^\n]*\n(?:[^\n]*\n)*?ok: \[{host}", out), out[-4000:]


def test_a_failed_health_check_stops_the_rollout(rollout: Rollout) -> None:
    src = version_copy(rollout.work, "0.1.2")
    bad = {"sandboxd_src": str(src), "sandboxd_health_run": {"cmd": ["/bin/false"]}, "sandboxd_health_retries": 2}
    r = rollout.playbook("rolling-upgrade.yml", bad)
    assert r.returncode != 0, r.stdout[-4000:]
    hosts = _hosts(rollout)
    # The first host was upgraded, failed its check and stays drained; the second was not touched.
    assert hosts["judge1"]["drained"] and hosts["judge1"]["version"] == "0.1.2", hosts["judge1"]
    assert not hosts["judge2"]["drained"] and hosts["judge2"]["version"] == "0.1.1", hosts["judge2"]
    # The fleet still serves on the healthy host.
    st, res = rollout.api("POST", "/v1/runs", {"cmd": ["/bin/true"]})
    assert st == 200 and res["status"] == "ok"
