"""Several sandboxd instances on one host: daemons with run_dirs and state_dirs
of their own, one-shot `sandboxd run`s and an in-process engine never touch
each other; a daemon refuses what another one owns (socket, pid file, port),
and heals when its cgroups and boxes are destroyed underneath it."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from box_fixtures import SyncEngine
from daemon_util import Daemon, free_port
from instances import inst
from sandboxd_client import Client, RunRequest

from sandboxd import config, hostlock
from sandboxd.engine import sweep
from sandboxd.engine.engine import EngineConfig
from sandboxd.engine.instance import UID_FLOOR
from sandboxd.sandbox import cgroups

SANDBOXD = [sys.executable, "-m", "sandboxd"]
ROOT = Path(__file__).resolve().parents[2]


def uid_range(uid: int) -> int:
    return (uid - UID_FLOOR) // EngineConfig().uid_count


def box_uid(c: Client) -> int:
    r = c.run(RunRequest(cmd=["id", "-u"]))
    assert r.status == "ok", r
    return int(r.stdout)


def metric(d: Daemon, name: str) -> float:
    with urllib.request.urlopen(f"{d.http}/metrics", timeout=30) as r:
        m = re.search(rf"^{name} (\S+)$", r.read().decode(), re.M)
    assert m, name
    return float(m.group(1))


def own_dirs(instance: str) -> list[Path]:
    return [d for d in _hierarchy(instance) if d.is_dir()]


def _hierarchy(instance: str) -> list[Path]:
    return sweep.instance_dirs(cgroups.for_instance(cgroups.detect("pytest-probe", create=False), instance))


class Load:
    """Runs jobs on a daemon from a thread until stopped; records every failure."""

    def __init__(self, d: Daemon) -> None:
        self.d, self.ok = d, 0
        self.failed: list[str] = []
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._loop, daemon=True)
        self._t.start()

    def _loop(self) -> None:
        with Client(f"unix://{self.d.sock}") as c:
            while not self._stop.is_set():
                try:
                    r = c.run(RunRequest(cmd=["sh", "-c", "echo ok"]))
                except Exception as e:  # the daemon unreachable is a failure too
                    self.failed.append(repr(e))
                    continue
                if r.status == "ok" and r.stdout == b"ok\n":
                    self.ok += 1
                else:
                    self.failed.append(f"{r.status}: {r.message}")

    def stop(self) -> None:
        self._stop.set()
        self._t.join(60)


def one_shot(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([*SANDBOXD, "run", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def own_env(tmp_path: Path, name: str) -> dict[str, str]:
    """A run_dir and a state_dir of its own (the agent is built there too)."""
    return {"SANDBOXD_RUN_DIR": str(tmp_path / name / "run"), "SANDBOXD_STATE_DIR": str(tmp_path / name / "state")}


def test_daemons_one_shot_runs_and_an_engine_share_a_host(engine: SyncEngine, tmp_path: Path) -> None:
    a = Daemon(inst("-inst-a"), env=own_env(tmp_path, "a"))
    b: Daemon | None = None
    loads: list[Load] = []
    try:
        assert engine.run(["true"]).status == "ok"
        with Client(f"unix://{a.sock}") as ca:
            uids = {"a": box_uid(ca)}
        loads.append(Load(a))
        # B starts (its crash sweep runs) while A and the engine serve.
        b = Daemon(inst("-inst-b"), env=own_env(tmp_path, "b"))
        loads.append(Load(b))
        assert engine.run(["true"]).status == "ok"
        runs = [one_shot("--json", "--", "id", "-u") for _ in range(3)]
        results = [(p.pid, *p.communicate(timeout=120)) for p in runs]
        with Client(f"unix://{b.sock}") as cb:
            uids["b"] = box_uid(cb)
        uids["engine"] = int(engine.run(["id", "-u"]).stdout)
        for n, (pid, out, err) in enumerate(results):
            assert json.loads(out)["status"] == "ok", err
            uids[f"cli{n}"] = int(json.loads(out)["stdout"])
            # A one-shot run removes its own lock file on exit.
            assert not (hostlock.LOCK_DIR / f"cli-{pid}.lock").exists()
        # B stops (removing its cgroups) while A and the engine serve.
        loads[1].stop()
        assert b.stop() == 0, b.output()
        assert not own_dirs(inst("-inst-b"))
        b = None
        assert engine.run(["true"]).status == "ok"
        with Client(f"unix://{a.sock}") as ca:
            assert ca.run(RunRequest(cmd=["true"])).status == "ok"
        loads[0].stop()
        assert all(ld.ok > 0 for ld in loads) and not [f for ld in loads for f in ld.failed], [
            ld.failed for ld in loads
        ]
        # Every live instance leased a uid range of its own (the one-shot runs
        # may or may not have overlapped each other; they all overlapped A, B, the engine).
        ranges = {k: uid_range(v) for k, v in uids.items()}
        daemons = [ranges[k] for k in ("a", "b", "engine")]
        assert len(set(daemons)) == 3 and not {ranges[f"cli{n}"] for n in range(3)} & set(daemons), ranges
        # Nothing of A was removed or damaged by the others.
        assert len(own_dirs(inst("-inst-a"))) == len(_hierarchy(inst("-inst-a")))
        assert metric(a, "sandboxd_heals_total") == 0 and metric(a, "sandboxd_healthy") == 1
        assert engine.engine.health.heals == 0 and engine.engine.health.check() is None
    finally:
        for ld in loads:
            ld.stop()
        if b is not None:
            b.stop()
        assert a.stop() == 0, a.output()


def stale_socket(path: str) -> None:
    """A socket file whose process is gone: nobody answers on it."""
    s = socket.socket(socket.AF_UNIX)
    s.bind(path)
    s.close()


def serve(*args: str) -> subprocess.CompletedProcess[str]:
    cmd = [*SANDBOXD, "serve", "--config", "/dev/null", "--pool-size", "1", *args]
    env = {**os.environ, "SANDBOXD_SELFTEST": "false"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)


def test_what_a_live_daemon_owns_is_refused_and_stale_files_are_replaced(tmp_path: Path) -> None:
    a = Daemon(inst("-owner"), pool_size=1)
    try:
        pid_file = a.dir / "sandboxd.pid"
        assert pid_file.read_text() == f"{a.proc.pid}\n"
        other = ["--instance", inst("-intruder")]
        # A's socket: refused at once, and left alone.
        # Each refused start names its own pid file, so only the resource under
        # test can collide (not a default path another run may hold).
        p = serve(
            *other, "--socket", a.sock, "--pid-file", str(tmp_path / "a.pid"), "--http", f"127.0.0.1:{free_port()}"
        )
        assert p.returncode == 1 and f"socket {a.sock}: a live process answers on it" in p.stderr, p.stderr
        # A's pid file, A's HTTP port: refused, naming them.
        p = serve(*other, "--socket", str(tmp_path / "b.sock"), "--pid-file", str(pid_file), "--http", "")
        assert p.returncode == 1 and f"pid file {pid_file}: held by live process {a.proc.pid}" in p.stderr, p.stderr
        p = serve(
            *other,
            "--socket",
            str(tmp_path / "c.sock"),
            "--pid-file",
            str(tmp_path / "c.pid"),
            "--http",
            f"127.0.0.1:{a.port}",
        )
        assert p.returncode == 1 and f"cannot listen on 127.0.0.1:{a.port}: in use" in p.stderr, p.stderr
        assert not any((tmp_path / f).exists() for f in ("b.sock", "c.sock", "a.pid", "c.pid"))
        assert pid_file.read_text() == f"{a.proc.pid}\n"
        with Client(f"unix://{a.sock}") as c:
            assert c.run(RunRequest(cmd=["true"])).status == "ok"
    finally:
        assert a.stop() == 0, a.output()
    assert not pid_file.exists() and not Path(a.sock).exists()


def test_a_stale_socket_is_replaced_and_only_our_own_is_removed(tmp_path: Path) -> None:
    sock = str(tmp_path / "s.sock")
    stale_socket(sock)
    d = Daemon(inst("-stale"), pool_size=1, socket=sock)
    try:
        with Client(f"unix://{sock}") as c:
            assert c.run(RunRequest(cmd=["true"])).status == "ok"
        # Someone else's socket now at the path (its daemon moved ours away):
        # stopping must not remove it.
        os.rename(sock, tmp_path / "moved.sock")
        stale_socket(sock)
        theirs = os.stat(sock).st_ino
    finally:
        assert d.stop() == 0, d.output()
    assert os.stat(sock).st_ino == theirs
    assert not list(tmp_path.glob("*.lock"))  # the claim's lock went with the claim


def test_heals_when_its_cgroups_and_agents_are_destroyed_underneath() -> None:
    d = Daemon(inst("-heal"), pool_size=2)
    try:
        c = Client(f"unix://{d.sock}")
        assert c.run(RunRequest(cmd=["true"])).status == "ok"
        running = c.start(RunRequest(cmd=["sleep", "30"]))
        while c.status()["pools"]["host"]["busy"] < 1:
            time.sleep(0.05)
        # Stopped while its boxes are destroyed: it cannot heal before it is asked.
        os.kill(d.proc.pid, signal.SIGSTOP)
        try:
            for child in Path(f"/proc/{d.proc.pid}/task").glob("*/children"):
                for pid in child.read_text().split():
                    os.kill(int(pid), signal.SIGKILL)  # its agents
            be = cgroups.for_instance(cgroups.detect("pytest-probe", create=False), inst("-heal"))
            cgroups.remove_instance(be)  # what a crash sweep that took it for dead did
            assert not own_dirs(inst("-heal"))
            probe = http.client.HTTPConnection("127.0.0.1", d.port, timeout=60)
            probe.request("GET", "/readyz")  # queued in the kernel until it runs again
        finally:
            os.kill(d.proc.pid, signal.SIGCONT)
        r = probe.getresponse()
        body = json.loads(r.read())
        assert r.status == 503 and body["ready"] is False, body
        assert "removed underneath" in body["reason"] or "lost their agent" in body["reason"], body
        # The run that was going on fails with a clear internal error...
        info = c.wait(running)
        assert info.result is not None and info.result.status == "internal_error", info
        assert "the box failed" in info.result.message
        # ...then it heals: ready again, and new runs work.
        deadline = time.monotonic() + 120
        while not d.ready():
            assert time.monotonic() < deadline, d.output()
            time.sleep(0.1)
        assert c.run(RunRequest(cmd=["sh", "-c", "echo back"])).stdout == b"back\n"
        assert metric(d, "sandboxd_heals_total") >= 1 and metric(d, "sandboxd_healthy") == 1
        health = c.status()["health"]
        assert health["problem"] is None and health["heals"] >= 1, health
        assert own_dirs(inst("-heal"))
        c.close()
        log = d.output()
        assert "unhealthy: " in log and "healed: " in log, log
    finally:
        assert d.stop() == 0, d.output()
    assert not own_dirs(inst("-heal"))


def test_client_and_script_variables_are_not_daemon_settings() -> None:
    env = {
        "SANDBOXD_ADDRESS": "unix:///run/sandboxd/sandboxd.sock",
        "SANDBOXD_TOKEN": "t",
        "SANDBOXD_LOG": "/var/log/sandboxd.log",
        "SANDBOXD_CLIENT_TIMEOUT": "5",
        "SANDBOXD_POOL_SIZE": "3",
        "SANDBOXD_STATE_DIR": "/srv/sandboxd",
    }
    cfg = config.load(Path("/dev/null"), env=env)
    assert (cfg.engine.pool_size, cfg.state_dir) == (3, "/srv/sandboxd")
    with pytest.raises(config.ConfigError, match="SANDBOXD_POOL_SIZ: unknown setting 'pool_siz'"):
        config.load(Path("/dev/null"), env={"SANDBOXD_POOL_SIZ": "3"})


def test_start_script_notices_a_daemon_that_died_at_once(tmp_path: Path) -> None:
    log = tmp_path / "log"
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "SANDBOXD_HTTP": f"127.0.0.1:{free_port()}",
        "SANDBOXD_LOG": str(log),
        "SANDBOXD_POOL_SIZE": "0",  # a bad setting: the daemon exits at once
    }
    p = subprocess.run([str(ROOT / "scripts/start.sh")], capture_output=True, text=True, timeout=120, env=env)
    assert p.returncode == 1 and "the daemon exited at once (status 2)" in p.stderr, p.stderr
    assert "pool_size" in p.stderr


def wait_gone(pid: int, timeout: float = 120) -> None:
    """Until `pid` (not our child: start.sh detached it) has exited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] == "Z":
                return
        except FileNotFoundError:
            return
        time.sleep(0.05)
    raise AssertionError(f"pid {pid} still running")


def test_start_script_starts_a_daemon_with_client_and_script_variables_set(tmp_path: Path) -> None:
    sock, pid_file, log = tmp_path / "s.sock", tmp_path / "sandboxd.pid", tmp_path / "log"
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "SANDBOXD_INSTANCE": inst("-startsh"),
        "SANDBOXD_HTTP": f"127.0.0.1:{free_port()}",
        "SANDBOXD_SOCKET": str(sock),
        "SANDBOXD_PID_FILE": str(pid_file),
        "SANDBOXD_POOL_SIZE": "1",
        "SANDBOXD_SELFTEST": "false",
        "SANDBOXD_LOG": str(log),  # start.sh's
        "SANDBOXD_ADDRESS": f"unix://{sock}",  # the client's
        "SANDBOXD_TOKEN": "unused-on-the-socket",
    }
    p = subprocess.run([str(ROOT / "scripts/start.sh")], capture_output=True, text=True, timeout=300, env=env)
    pid = int(pid_file.read_text()) if pid_file.exists() else None
    try:
        assert p.returncode == 0, p.stdout + p.stderr + (log.read_text() if log.exists() else "")
        assert pid is not None and f"(pid {pid}, log {log})" in p.stdout, p.stdout
        assert "AC" in p.stdout, p.stdout
    finally:
        if pid is not None:
            os.kill(pid, signal.SIGTERM)
            wait_gone(pid)
    assert not pid_file.exists() and not sock.exists()


def test_a_start_leaves_an_instance_alone_while_its_lock_is_held(tmp_path: Path) -> None:
    """Whatever run_dir either one has: the lock is host-wide."""
    held = inst("-held")
    lock = hostlock.HostLock.try_take(held)
    assert lock is not None
    try:
        cgroups.detect(held)  # its cgroups, as a live instance has them
        assert own_dirs(held)
        cfg = EngineConfig(instance=inst("-sweeper"), pool_size=1, run_dir=tmp_path / "run")
        eng = SyncEngine(cfg)
        try:
            assert eng.run(["true"]).status == "ok"
            assert len(own_dirs(held)) == len(_hierarchy(held))
        finally:
            eng.close()
    finally:
        # Dead now: the next start sweeps it.
        lock.release()
    eng = SyncEngine(EngineConfig(instance=inst("-sweeper"), pool_size=1, run_dir=tmp_path / "run"))
    eng.close()
    assert not own_dirs(held)


def test_a_start_leaves_alone_a_lockless_instance_whose_processes_run(tmp_path: Path) -> None:
    """A live daemon of an older version (its locks in a run_dir of its own)
    holds no host-wide lock, but its agents run in its cgroups."""
    old = inst("-older")
    be = cgroups.detect(old)
    proc = subprocess.Popen(["sleep", "60"])
    try:
        for d in _hierarchy(old):
            (d / "cgroup.procs").write_text(str(proc.pid))
        eng = SyncEngine(EngineConfig(instance=inst("-sweeper2"), pool_size=1, run_dir=tmp_path / "run"))
        eng.close()
        assert len(own_dirs(old)) == len(_hierarchy(old))
    finally:
        proc.kill()
        proc.wait()
    eng = SyncEngine(EngineConfig(instance=inst("-sweeper2"), pool_size=1, run_dir=tmp_path / "run"))
    eng.close()
    assert not own_dirs(old) and not sweep.has_tasks(be)


def test_a_lock_is_exclusive_and_its_holder_removes_its_file() -> None:
    name = inst("-lockfile")
    path = hostlock.LOCK_DIR / f"{name}.lock"
    first = hostlock.HostLock.try_take(name)
    assert first is not None and path.exists()
    assert hostlock.HostLock.try_take(name) is None
    first.release()
    assert not path.exists()
