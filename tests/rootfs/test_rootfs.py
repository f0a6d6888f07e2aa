"""A built per-language rootfs, end to end: build, verify, switch, use, hot-swap in a daemon."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from daemon_util import Daemon
from instances import inst
from sandboxd_client import Client, Submission, TestCase

from sandboxd.app.rootfs_build import RECIPES
from sandboxd.rootfs import store

PROBE = b"import os, sys\nprint(os.path.exists('/usr/bin/gcc'), sys.version_info[:2] == (3, 11))\n"


def sandboxd(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sandboxd", *args], capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_python3_rootfs_built_and_hot_swapped(tmp_path: Path) -> None:
    state = tmp_path / "state"
    cfg = tmp_path / "sandboxd.toml"
    cfg.write_text(f'state_dir = "{state}"\n')
    d = Daemon(inst("-rootfs"), pool_size=2, config=cfg)
    try:
        with Client(f"unix://{d.sock}") as c:
            sub = Submission(lang="python3", source=PROBE, tests=[TestCase(b"")])
            before = c.submit(sub).tests[0].stdout
            assert before == b"True True\n"  # the host's /usr: gcc is there

            p = sandboxd("rootfs", "build", "python3", "--state-dir", str(state))
            assert p.returncode == 0, p.stderr
            assert "[5/5] self-test" in p.stderr and "now runs on" in p.stderr
            tree = store.current(state, "python3")
            assert tree is not None
            size = store.size_of(tree)
            assert size < 80 << 20, f"python3 tree is {size >> 20} MiB"
            assert not list(tree.glob("usr/bin/dpkg*")) and not (tree / "var/lib/dpkg").exists()
            assert not (tree / "bin/sh").exists() and not (tree / "usr/bin/sh").exists()

            d.proc.send_signal(signal.SIGHUP)
            deadline = time.monotonic() + 30
            after = before
            while after == before and time.monotonic() < deadline:
                time.sleep(0.2)
                after = c.submit(sub).tests[0].stdout
            assert after == b"False True\n"  # the built tree: no compiler in it
            # Languages without a built tree stay on the host.
            c_sub = Submission(lang="c", source=b"int main(void){return 0;}", tests=[TestCase(b"")])
            assert c.submit(c_sub).verdict == "AC"

        listing = sandboxd("rootfs", "list", "--state-dir", str(state))
        assert tree.name in listing.stdout and "live" in listing.stdout
        # The same recipe again: same content, same name, nothing new.
        p = sandboxd("rootfs", "build", "python3", "--state-dir", str(state))
        assert p.returncode == 0 and "identical to the existing tree" in p.stderr, p.stderr
    finally:
        assert d.stop() == 0, d.output()


def test_unknown_recipe_is_a_clear_error(tmp_path: Path) -> None:
    p = sandboxd("rootfs", "build", "cobol", "--state-dir", str(tmp_path))
    assert p.returncode == 1 and "no rootfs recipe for 'cobol'" in p.stderr


TARGETS = {"c": 250 << 20, "cpp": 250 << 20, "python3": 80 << 20}


@pytest.mark.slow
@pytest.mark.parametrize("lang", sorted(p.stem for p in RECIPES.glob("*.toml") if p.stem != "python3"))
def test_every_recipe_builds_and_passes_its_self_test(tmp_path: Path, lang: str) -> None:
    p = sandboxd("rootfs", "build", lang, "--state-dir", str(tmp_path))
    assert p.returncode == 0, p.stderr[-3000:]
    tree = store.current(tmp_path, lang)
    assert tree is not None
    assert store.size_of(tree) <= TARGETS.get(lang, 1 << 30)
    setid = [str(f) for f in tree.rglob("*") if not f.is_symlink() and f.is_file() and f.stat().st_mode & 0o6000]
    assert setid == [], setid


def test_cleanup_never_removes_a_tree_in_use(tmp_path: Path) -> None:
    """The in-use protocol of sandboxd.rootfs.store: a pool's TreeHold keeps its
    tree through remove_unused; once released, the tree goes (the live one stays)."""
    d = store.lang_dir(tmp_path, "python3")
    live, old = d / "aaaa", d / "bbbb"
    for t in (live, old):
        (t / "usr").mkdir(parents=True)
    store.switch(tmp_path, "python3", live)
    assert store.current(tmp_path, "python3") == live
    hold = store.TreeHold(old)
    try:
        assert store.in_use(old) and not store.in_use(live)
        assert store.remove_unused(tmp_path, "python3", keep=set()) == []
        assert old.is_dir()
    finally:
        hold.release()
    assert not store.in_use(old)
    assert store.remove_unused(tmp_path, "python3", keep=set()) == [old]
    assert live.is_dir() and not old.exists()
