"""`sandboxd run`: the one-shot CLI, as a user types it."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

SANDBOXD = [sys.executable, "-m", "sandboxd"]
ROOT = Path(__file__).resolve().parents[2]


def cli(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run([*SANDBOXD, *args], input=stdin, capture_output=True, text=True, timeout=120)


def test_command_with_stdin_and_summary() -> None:
    p = cli("run", "--", "tr", "a-z", "A-Z", stdin="hello\n")
    assert p.returncode == 0, p.stderr
    assert p.stdout == "HELLO\n"
    assert "sandboxd: ok" in p.stderr


def test_json_result_fields_and_exit_status() -> None:
    p = cli("run", "--json", "--", "sh", "-c", "echo out; echo err >&2; exit 3")
    assert p.returncode == 1
    d = json.loads(p.stdout)
    assert d["status"] == "nonzero_exit" and d["exit_code"] == 3 and d["signal"] is None
    assert d["stdout"] == "out\n" and d["stderr"] == "err\n"
    for key in ("cpu_time", "wall_time", "memory", "stdout_truncated", "stderr_truncated"):
        assert key in d


def test_compiled_language_from_file() -> None:
    p = cli("run", "--lang", "c", str(ROOT / "examples/aplusb.c"), stdin="2 3\n")
    assert p.returncode == 0, p.stderr
    assert p.stdout == "5\n"


def test_compile_error_is_reported(tmp_path: Path) -> None:
    src = tmp_path / "bad.cpp"
    src.write_text("int main() { return missing; }\n")
    p = cli("run", "--json", "--lang", "cpp", str(src))
    assert p.returncode == 1
    d = json.loads(p.stdout)
    assert d["stage"] == "compile" and d["status"] == "nonzero_exit"
    assert "missing" in d["stderr"]


def test_limits_flags(tmp_path: Path) -> None:
    src = tmp_path / "loop.py"
    src.write_text("while True: pass\n")
    p = cli("run", "--json", "--time", "0.3", "--lang", "python3", str(src))
    assert p.returncode == 1
    d = json.loads(p.stdout)
    assert d["status"] == "time_limit" and d["stage"] == "run" and d["compile"] is None
    p = cli("run", "--json", "--memory", "32", "--", "python3", "-c", "x = bytearray(100 << 20)")
    assert json.loads(p.stdout)["status"] == "memory_limit"
    p = cli("run", "--json", "--procs", "4", "--", "sh", "-c", "for i in 1 2 3 4 5 6; do sleep 1 & done; wait")
    assert json.loads(p.stdout)["status"] == "nonzero_exit"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run"], "nothing to run"),
        (["run", "--time", "0", "--", "true"], "cpu_time"),
        (["run", "--memory", "lots", "--", "true"], "invalid int"),
        (["run", "--lang", "cobol", "x.cob"], "unknown 'cobol'"),
        (["run", "--lang", "c", "/nonexistent.c"], "cannot read source"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_bad_usage_exits_2_with_a_message(args: list[str], message: str) -> None:
    p = cli(*args)
    assert p.returncode == 2
    assert message in p.stderr
    assert "Traceback" not in p.stderr


def test_version() -> None:
    p = cli("--version")
    assert p.returncode == 0 and re.fullmatch(r"sandboxd \S+\n", p.stdout), p.stdout


def test_a_one_shot_run_leaves_no_lock_file() -> None:
    from sandboxd import hostlock

    p = subprocess.Popen([*SANDBOXD, "run", "--", "true"], stderr=subprocess.PIPE, text=True)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 0, err
    # Its instance lock (the instance is named after its pid) went with it.
    assert not (hostlock.LOCK_DIR / f"cli-{p.pid}.lock").exists()


def test_boxes_build_without_cap_mknod() -> None:
    # systemd's PrivateDevices=yes (the unit sets it) drops CAP_MKNOD: the box's
    # /dev nodes are then binds of the daemon's own, and they work the same.
    script = "head -c 4 /dev/urandom | wc -c; echo x > /dev/null; stat -c %t:%T /dev/null /dev/zero"
    p = subprocess.run(
        ["capsh", "--drop=cap_mknod", "--", "-c", '"$@"', "capsh", *SANDBOXD, "run", "--", "sh", "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 0, p.stderr
    assert p.stdout == "4\n1:3\n1:5\n", p.stdout
