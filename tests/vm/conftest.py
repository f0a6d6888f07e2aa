"""Session fixtures for the VM tests: the cached image, one booted VM, and the
checkout installed in it.  Run with: pytest -q tests/vm -m vm"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import build_image  # noqa: E402
from harness import TIMINGS, VM, qemu_binary  # noqa: E402

# The checkout tested in the guest: this one, or another (e.g. a patched copy) via SANDBOXD_VM_CHECKOUT.
REPO = Path(os.environ.get("SANDBOXD_VM_CHECKOUT") or HERE.parents[1]).resolve()
GUEST_SRC = "/root/sandboxd"


def _setup_host() -> None:
    r = subprocess.run(["bash", str(HERE / "setup.sh")], capture_output=True, text=True, timeout=1200)
    if r.returncode != 0:
        # Report, then let the qemu check below decide: skip only if qemu is truly absent.
        sys.stderr.write(f"tests/vm/setup.sh failed ({r.returncode}):\n{r.stdout}{r.stderr}\n")


@pytest.fixture(scope="session", autouse=True)
def no_leaks() -> None:
    """Overrides tests/box_fixtures.py's host cgroup leak check: these tests create
    no cgroup on the host (the engine runs in the guest), so that check would
    only see other test sessions running on the same host at the same time."""


def _image(kernel: str) -> Path:
    _setup_host()
    if qemu_binary() is None:
        pytest.skip("qemu-system-x86_64 is not installed and tests/vm/setup.sh could not install it")
    t = time.monotonic()
    d = build_image.build(kernel=kernel)
    TIMINGS[f"image {kernel} (build or cache hit)"] = time.monotonic() - t
    return d


def _booted(image: Path, kernel: str) -> Iterator[VM]:
    machine = VM(image)
    TIMINGS[f"boot to ssh ({kernel})"] = machine.boot(timeout=300)
    try:
        yield machine
    finally:
        machine.shutdown()


def _install_checkout(vm: VM, kernel: str) -> str:
    """This checkout (minus .git/.venv) copied into the guest and pip-installed, offline, into the image's venv."""
    t = time.monotonic()
    vm.copy_in(REPO, GUEST_SRC)
    pip = f"{build_image.GUEST_VENV}/bin/pip"
    vm.run(
        [pip, "install", "-q", "--no-index", "--no-deps", "--no-build-isolation", GUEST_SRC], timeout=600, check=True
    )
    TIMINGS[f"copy + install checkout ({kernel})"] = time.monotonic() - t
    return GUEST_SRC


@pytest.fixture(scope="session")
def vm_image() -> Path:
    return _image(build_image.DEFAULT_KERNEL)


@pytest.fixture(scope="session")
def vm(vm_image: Path) -> Iterator[VM]:
    """The guest on Debian 12's own kernel (6.1): every VM test."""
    yield from _booted(vm_image, build_image.DEFAULT_KERNEL)


@pytest.fixture(scope="session")
def guest_checkout(vm: VM) -> str:
    return _install_checkout(vm, build_image.DEFAULT_KERNEL)


@pytest.fixture(scope="module")
def vm_612() -> Iterator[VM]:
    """The same guest on 6.12 from backports: the v2 backend's group per box
    (test_cgroup_v2.py; down again after that module)."""
    yield from _booted(_image("6.12"), "6.12")


@pytest.fixture(scope="module")
def guest_checkout_612(vm_612: VM) -> str:
    return _install_checkout(vm_612, "6.12")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if TIMINGS:
        terminalreporter.section("vm timings")
        for k, v in TIMINGS.items():
            terminalreporter.write_line(f"{k}: {v:.1f}s")
