"""Boot the tests/vm guest (Debian 12, pure cgroup v2, qemu TCG), install this
checkout in it and run benchmarks/cgroup_v2.py there in a unit with
Delegate=yes (as production runs).  TCG emulates the CPU: only the ratios
mean anything.  Prints the guest's output.  --v1 boots the same guest on
cgroup v1 (systemd.unified_cgroup_hierarchy=0): the v1 path against bare in
the same emulated machine.  --kernel 6.1: Debian 12's own kernel, which has
no reused path (leaf and migrate only), and the only one with v1's memory
controller (Debian builds 6.12 without CONFIG_MEMCG_V1), so --v1 needs it.

    .venv/bin/python benchmarks/vm_cgroup_v2.py [--rounds 5] [--block 100] [--kernel 6.12]
    .venv/bin/python benchmarks/vm_cgroup_v2.py --kernel 6.1 [--v1]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "vm"))

import build_image  # noqa: E402
from harness import VM  # noqa: E402

GUEST_SRC = "/root/sandboxd"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--block", type=int, default=100)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--v1", action="store_true", help="boot the guest on cgroup v1")
    ap.add_argument("--kernel", choices=sorted(build_image.KERNELS), default="6.12", help="the guest's kernel")
    a = ap.parse_args()
    if a.v1 and a.kernel != "6.1":
        ap.error(f"--v1 needs --kernel 6.1: Debian's {a.kernel} is built without v1's memory controller")
    cmdline = build_image.KERNEL_CMDLINE
    if a.v1:
        cmdline = cmdline.replace("systemd.unified_cgroup_hierarchy=1", "systemd.unified_cgroup_hierarchy=0")
    vm = VM(build_image.build(kernel=a.kernel), cmdline=cmdline)
    vm.boot(timeout=300)
    try:
        vm.copy_in(REPO, GUEST_SRC)
        pip = f"{build_image.GUEST_VENV}/bin/pip"
        install = [pip, "install", "-q", "--no-index", "--no-deps", "--no-build-isolation", GUEST_SRC]
        vm.run(install, timeout=600, check=True)
        cmd = ["systemd-run", "--wait", "--pipe", "--quiet", "--collect", "-p", "Delegate=yes"]
        cmd += [build_image.GUEST_PYTHON, f"{GUEST_SRC}/benchmarks/cgroup_v2.py"]
        cmd += ["--rounds", str(a.rounds), "--block", str(a.block), *(["--json"] if a.json else [])]
        r = vm.run(cmd, timeout=3000)
        print(r.stdout)
        print(r.stderr, file=sys.stderr)
        return r.returncode
    finally:
        vm.shutdown()


if __name__ == "__main__":
    sys.exit(main())
