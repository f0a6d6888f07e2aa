#!/usr/bin/env python3
"""Build (once) the Debian 12 guest image the VM tests boot, and cache it.

The cache entry is /var/cache/sandboxd-test/vm/<key>/, where <key> hashes
everything the image is made from: this file (package list, guest config) and
sandboxd's Python dependencies from pyproject.toml.  A changed recipe gets a
new directory; nothing is ever patched in place.  An entry holds

    rootfs.img     raw ext4 root filesystem (mke2fs -d: no loop device needed)
    vmlinuz        kernel and initrd, booted with qemu -kernel/-initrd
    initrd.img
    id_ed25519     the ssh key root logs in with (its .pub is baked in)
    build.json     recipe key, timings, package versions

It is built in a temporary directory next to the cache entry and renamed into
place only when complete, under an flock, so an interrupted or concurrent
build never leaves a half image behind.

Python deps: the guest is Debian 12 (Python 3.11).  The host downloads
binary cp311/manylinux wheels (whatever Python the host runs) into a
wheelhouse; the image gets a venv at /opt/sandboxd-venv with them installed
offline, and the wheelhouse itself at /opt/sandboxd-wheels.  Tests then only
install the checkout (--no-deps, no network) into that venv.

Usage: build_image.py [--force]   prints the cache entry's path.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
import uuid
from pathlib import Path

CACHE_ROOT = Path(os.environ.get("SANDBOXD_VM_CACHE", "/var/cache/sandboxd-test/vm"))
REPO = Path(__file__).resolve().parents[2]
SUITE = "bookworm"
MIRRORS = (
    "deb http://deb.debian.org/debian bookworm main",
    "deb http://deb.debian.org/debian bookworm-updates main",
    "deb http://deb.debian.org/debian-security bookworm-security main",
)
BACKPORTS = "deb http://deb.debian.org/debian bookworm-backports main"
# Which kernel an image boots: Debian 12's own (the default: every VM test but
# one), or its 6.12 from backports, where a write to an open memory.peak
# resets it and the v2 backend keeps one group per box (test_cgroup_v2.py
# runs the engine on both).  `cpu`: qemu -cpu; QEMU 7.2's TCG double-faults
# early in 6.12's boot (SLUB's cmpxchg16b with a %gs override) unless cx16 is off.
KERNELS = {
    "6.1": {"package": "linux-image-cloud-amd64", "cpu": "max"},
    "6.12": {"package": "linux-image-cloud-amd64/bookworm-backports", "cpu": "max,cx16=off"},
}
DEFAULT_KERNEL = "6.1"
PACKAGES = (
    # boot and login
    "systemd",
    "systemd-sysv",
    "libpam-systemd",  # ssh sessions get a logind scope, as on a real host
    "udev",
    "dbus",
    # (the kernel: KERNELS)
    "initramfs-tools",
    "openssh-server",
    "iproute2",
    "procps",
    "ca-certificates",
    # sandboxd: the daemon, its agent (built with cc -static) and libseccomp
    "python3",
    "python3-venv",
    "gcc",
    "libc6-dev",
    "libseccomp2",
    # ansible's apt module (tests/vm/test_ansible.py) needs it on the managed host
    "python3-apt",
)
KERNEL_CMDLINE = "root=/dev/vda rw console=ttyS0 systemd.unified_cgroup_hierarchy=1 random.trust_cpu=on"
IMAGE_SIZE = "4G"
GUEST_VENV = "/opt/sandboxd-venv"
GUEST_PYTHON = f"{GUEST_VENV}/bin/python"
KEEP_ENTRIES = 3  # cache entries kept (most recently used first); each is ~0.8 GB on disk
GUEST_WHEELS = "/opt/sandboxd-wheels"
# Timers and units that only cost boot time in a throwaway test VM.
MASK = (
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "dpkg-db-backup.timer",
    "e2scrub_all.timer",
    "e2scrub_reap.service",
    "fstrim.timer",
    "man-db.timer",
    "systemd-tmpfiles-clean.timer",
)

NETWORK = """\
[Match]
Name=en* eth*

[Network]
DHCP=ipv4
LinkLocalAddressing=no
IPv6AcceptRA=no
"""
SSHD = """\
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UseDNS no
GSSAPIAuthentication no
MaxSessions 64
MaxStartups 64
"""
CUSTOMIZE = f"""\
set -eux
systemctl enable systemd-networkd.service ssh.service
for u in {" ".join(MASK)}; do systemctl mask "$u"; done
# No network wait: ssh comes up as soon as the link has a lease.
systemctl mask systemd-networkd-wait-online.service
python3 -m venv {GUEST_VENV}
{GUEST_VENV}/bin/pip install --no-index --find-links {GUEST_WHEELS} -r {GUEST_WHEELS}/requirements.txt
{GUEST_VENV}/bin/python -c 'import uvloop, msgspec, msgpack, pyseccomp, pytest'
chmod 700 /root/.ssh
chmod 600 /root/.ssh/authorized_keys
rm -f /etc/ssh/ssh_host_*
ssh-keygen -A
apt-get clean
rm -rf /var/lib/apt/lists/* /tmp/customize.sh
"""


def requirements() -> list[str]:
    """sandboxd's runtime deps plus pytest, from pyproject.toml; setuptools to install the checkout."""
    proj = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    test = [r for r in proj["optional-dependencies"]["test"] if r.replace(" ", "").startswith("pytest")]
    build = [r for r in tomllib.loads((REPO / "pyproject.toml").read_text())["build-system"]["requires"]]
    return [*proj["dependencies"], *test, *build, "wheel"]


def recipe_key(kernel: str = DEFAULT_KERNEL) -> str:
    h = hashlib.sha256()
    h.update(Path(__file__).read_bytes())
    h.update("\n".join(requirements()).encode())
    h.update(kernel.encode())
    return h.hexdigest()[:16]


def cache_dir(kernel: str = DEFAULT_KERNEL) -> Path:
    return CACHE_ROOT / recipe_key(kernel)


def is_built(d: Path) -> bool:
    return all((d / f).exists() for f in ("rootfs.img", "vmlinuz", "initrd.img", "id_ed25519", "build.json"))


class BuildError(RuntimeError):
    pass


def _run(cmd: list[str], log: Path, **kw: object) -> None:
    with open(log, "a") as f:
        f.write(f"\n$ {' '.join(cmd)}\n")
        f.flush()
        r = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, **kw)  # type: ignore[call-overload]
    if r.returncode != 0:
        tail = log.read_text(errors="replace").splitlines()[-40:]
        raise BuildError(f"{cmd[0]} failed with {r.returncode}; last lines of {log}:\n" + "\n".join(tail))


def _download_wheels(dest: Path, log: Path) -> None:
    reqs = requirements()
    dest.mkdir(parents=True)
    # Binary wheels for the guest's CPython 3.11, whatever Python the host runs.
    platforms = ("manylinux_2_36_x86_64", "manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")
    cmd = [sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "-q", "--only-binary=:all:"]
    cmd += ["--python-version", "3.11", "--implementation", "cp", "--abi", "cp311"]
    for p in platforms:
        cmd += ["--platform", p]
    _run([*cmd, "-d", str(dest), *reqs], log)
    (dest / "requirements.txt").write_text("\n".join(reqs) + "\n")


def _overlay(dest: Path, pubkey: str) -> None:
    files = {
        "etc/hostname": "sandboxd-vm\n",
        "etc/hosts": "127.0.0.1\tlocalhost\n127.0.1.1\tsandboxd-vm\n",
        "etc/fstab": "/dev/vda / ext4 rw,errors=remount-ro 0 1\n",
        # A fixed id: every boot of a fresh overlay is otherwise a "first boot".
        "etc/machine-id": uuid.uuid4().hex + "\n",
        "etc/systemd/network/10-dhcp.network": NETWORK,
        "etc/ssh/sshd_config.d/sandboxd-vm.conf": SSHD,
        "root/.ssh/authorized_keys": pubkey,
        "tmp/customize.sh": CUSTOMIZE,
    }
    for rel, text in files.items():
        p = dest / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)


def _touch(d: Path) -> None:
    (d / "last_used").touch()


def _prune(keep: Path) -> None:
    """Under the lock: drop half-built trees (their builder died) and all but
    the KEEP_ENTRIES most recently used entries.  A VM still running on a
    removed image keeps reading it through its open file."""
    entries = []
    for d in CACHE_ROOT.iterdir():
        if d.name.startswith(".build-"):
            _rmtree(d)
        elif d.is_dir() and d != keep and is_built(d):
            stamp = d / "last_used"
            entries.append(((stamp if stamp.exists() else d / "build.json").stat().st_mtime, d))
    for _, d in sorted(entries, reverse=True)[KEEP_ENTRIES - 1 :]:
        _rmtree(d)


def build(force: bool = False, kernel: str = DEFAULT_KERNEL) -> Path:
    """The cache entry's path; builds it first if needed.  kernel: a key of KERNELS."""
    final = cache_dir(kernel)
    if is_built(final) and not force:
        _touch(final)
        return final
    CACHE_ROOT.mkdir(parents=True, exist_ok=True)
    lock = os.open(CACHE_ROOT / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a concurrent builder finishes first; then we reuse its result
        if is_built(final) and not force:
            _touch(final)
            return final
        for tool in ("mmdebstrap", "mke2fs", "ssh-keygen"):
            if shutil.which(tool) is None:
                raise BuildError(f"{tool} not found: run tests/vm/setup.sh")
        tmp = Path(tempfile.mkdtemp(prefix=f".build-{final.name}-", dir=CACHE_ROOT))
        try:
            _build_into(tmp, final.name, kernel)
            if final.exists():
                shutil.rmtree(final)
            tmp.rename(final)  # atomic: readers see no entry or a complete one
            _touch(final)
            _prune(keep=final)
        finally:
            if tmp.exists():
                _rmtree(tmp)
    finally:
        os.close(lock)
    return final


def _rmtree(path: Path) -> None:
    # The tree may hold root-owned files with odd modes; rm copes best.
    subprocess.run(["rm", "-rf", "--one-file-system", str(path)], check=False)


def _build_into(tmp: Path, key: str, kernel: str) -> None:
    log = tmp / "build.log"
    times: dict[str, float] = {}
    t0 = time.monotonic()
    _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "sandboxd-vm-test", "-f", str(tmp / "id_ed25519")], log)
    overlay = tmp / "overlay"
    _download_wheels(overlay / GUEST_WHEELS.lstrip("/"), log)
    _overlay(overlay, (tmp / "id_ed25519.pub").read_text())
    times["wheels"] = time.monotonic() - t0

    t = time.monotonic()
    root = tmp / "root"
    cmd = [
        "mmdebstrap",
        "--mode=root",
        "--variant=minbase",
        "--format=directory",
        f"--include={','.join((*PACKAGES, KERNELS[kernel]['package']))}",
        # Files first (sync-in copies a host directory into the tree), then commands in the chroot.
        f"--customize-hook=sync-in {overlay} /",
        '--customize-hook=chroot "$1" /bin/bash /tmp/customize.sh',
        SUITE,
        str(root),
        *MIRRORS,
        *([BACKPORTS] if "/bookworm-backports" in KERNELS[kernel]["package"] else []),
    ]
    _run(cmd, log, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    times["mmdebstrap"] = time.monotonic() - t

    t = time.monotonic()
    boot = root / "boot"
    kernels = sorted(boot.glob("vmlinuz-*"))
    initrds = sorted(boot.glob("initrd.img-*"))
    if len(kernels) != 1 or len(initrds) != 1:
        raise BuildError(f"expected one kernel and one initrd in {boot}, found {kernels} {initrds}")
    shutil.copy2(kernels[0], tmp / "vmlinuz")
    shutil.copy2(initrds[0], tmp / "initrd.img")
    _run(["mke2fs", "-q", "-F", "-t", "ext4", "-L", "root", "-d", str(root), str(tmp / "rootfs.img"), IMAGE_SIZE], log)
    times["mke2fs"] = time.monotonic() - t

    pkgs = subprocess.run(
        [
            "chroot",
            str(root),
            "dpkg-query",
            "-W",
            "-f",
            "${Package} ${Version}\\n",
            *PACKAGES,
            "systemd",
            "linux-image-*",
        ],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.split("\n")
    _rmtree(root)
    _rmtree(overlay)
    times["total"] = time.monotonic() - t0
    info = {
        "key": key,
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "kernel": kernels[0].name,
        "cmdline": KERNEL_CMDLINE,
        "cpu": KERNELS[kernel]["cpu"],
        "seconds": {k: round(v, 1) for k, v in times.items()},
        "requirements": requirements(),
        "packages": sorted(p for p in pkgs if p),
    }
    (tmp / "build.json").write_text(json.dumps(info, indent=2) + "\n")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--force", action="store_true", help="rebuild even if the cache entry exists")
    ap.add_argument("--kernel", choices=sorted(KERNELS), default=DEFAULT_KERNEL)
    args = ap.parse_args()
    t = time.monotonic()
    try:
        d = build(force=args.force, kernel=args.kernel)
    except BuildError as e:
        print(f"build_image: {e}", file=sys.stderr)
        return 1
    print(d)
    print(f"build_image: ready in {time.monotonic() - t:.1f}s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
