"""Boot the cached Debian 12 image under qemu (TCG) and drive it over ssh.

    with VM(build_image.build()) as vm:      # boot() on enter, shutdown() on exit
        vm.run(["uname", "-r"], check=True)
        vm.copy_in(Path("src"), "/root/src")

Every boot writes to its own qcow2 overlay backed by the cached raw image, so
the cache stays pristine and boots never share state.  qemu is started under
`timeout` (a hard ceiling on its life) and killed by its own PID (from
-pidfile) on shutdown; ssh reaches the guest through a user-mode network
forward bound to 127.0.0.1 only, on a free port picked per boot.  KVM is never
used: /dev/kvm may exist without working, and TCG is the same everywhere.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

KERNEL_CMDLINE = "root=/dev/vda rw console=ttyS0 systemd.unified_cgroup_hierarchy=1 random.trust_cpu=on"
DEFAULT_EXCLUDES = (".git", ".venv", "__pycache__", "*.egg-info", ".pytest_cache", ".mypy_cache", ".ruff_cache")


# Seconds per phase, filled in by whoever drives the VMs (the pytest fixtures print them).
TIMINGS: dict[str, float] = {}


class VMError(RuntimeError):
    pass


def qemu_binary() -> str | None:
    return shutil.which("qemu-system-x86_64")


def _die_with_parent() -> None:
    """In the `timeout` wrapper, before exec: SIGTERM when our process dies
    without shutdown() (killed test run); timeout passes it on to qemu."""
    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_pdeathsig = 1
    libc.prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class VM:
    def __init__(
        self,
        image_dir: Path,
        memory_mb: int = 1024,
        cpus: int = 2,
        max_lifetime: float = 3600.0,
        cmdline: str | None = None,
        forward_ports: tuple[int, ...] = (),
    ) -> None:
        self.image_dir = image_dir
        # Guest TCP ports also reachable from the host's loopback: guest port -> host port (set at boot).
        self.forward_ports = forward_ports
        self.forwards: dict[int, int] = {}
        self.memory_mb = memory_mb
        self.cpus = cpus
        self.max_lifetime = max_lifetime
        if cmdline is None:  # the image's own, else the default
            with contextlib.suppress(OSError, ValueError, KeyError):
                cmdline = str(json.loads((image_dir / "build.json").read_text())["cmdline"])
        self.cmdline = cmdline or KERNEL_CMDLINE
        self.cpu = "max"  # qemu -cpu: the image's own (build_image.KERNELS), else max
        with contextlib.suppress(OSError, ValueError, KeyError):
            self.cpu = str(json.loads((image_dir / "build.json").read_text())["cpu"])
        self.key = image_dir / "id_ed25519"
        self.workdir: Path | None = None
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None  # the `timeout` wrapper
        self.qemu_pid: int | None = None
        self.boot_seconds: float | None = None

    # -- lifecycle ---------------------------------------------------------

    def __enter__(self) -> VM:
        self.boot()
        return self

    def __exit__(self, typ: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.shutdown()

    @property
    def console_log(self) -> Path:
        assert self.workdir is not None
        return self.workdir / "console.log"

    def console_tail(self, lines: int = 40) -> str:
        try:
            text = self.console_log.read_text(errors="replace")
        except (AssertionError, FileNotFoundError):
            return "(no console log)"
        return "\n".join(text.splitlines()[-lines:])

    def boot(self, timeout: float = 180.0) -> float:
        """Start qemu and wait until ssh answers; returns the seconds it took."""
        qemu = qemu_binary()
        if qemu is None:
            raise VMError("qemu-system-x86_64 not found: run tests/vm/setup.sh")
        if self.proc is not None:
            raise VMError("already booted")
        t0 = time.monotonic()
        self.workdir = Path(tempfile.mkdtemp(prefix="sandboxd-vm-"))
        overlay = self.workdir / "overlay.qcow2"
        base = self.image_dir / "rootfs.img"
        img = ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", str(base), str(overlay)]
        subprocess.run(img, check=True, capture_output=True)
        for attempt in range(3):
            self.port = _free_port()
            self.forwards = {g: _free_port() for g in self.forward_ports}
            fwd = "".join(f",hostfwd=tcp:127.0.0.1:{h}-:{g}" for g, h in self.forwards.items())
            pidfile = self.workdir / "qemu.pid"
            opts: list[tuple[str, ...]] = [
                ("-accel", "tcg"),
                ("-cpu", self.cpu),
                ("-m", str(self.memory_mb)),
                ("-smp", str(self.cpus)),
                ("-nodefaults", "-no-user-config", "-no-reboot"),
                ("-display", "none"),
                ("-kernel", str(self.image_dir / "vmlinuz")),
                ("-initrd", str(self.image_dir / "initrd.img")),
                ("-append", self.cmdline),
                # cache=unsafe: the overlay is thrown away, so its flushes are wasted time.
                ("-drive", f"file={overlay},if=virtio,format=qcow2,cache=unsafe,discard=unmap"),
                # User-mode network; the ways in are ssh (and forward_ports) forwarded from the host's loopback.
                # (The guest reaches the host's loopback as 10.0.2.2.)
                ("-netdev", f"user,id=n0,hostfwd=tcp:127.0.0.1:{self.port}-:22{fwd}"),
                ("-device", "virtio-net-pci,netdev=n0,romfile="),
                ("-device", "virtio-rng-pci"),
                ("-serial", f"file:{self.console_log}"),  # ttyS0: kernel and systemd console
                ("-serial", f"file:{self.workdir / 'serial1.log'}"),  # ttyS1: free for guest output
                ("-pidfile", str(pidfile)),
            ]
            # `timeout` is a hard ceiling on qemu's life should this process die without shutdown().
            cmd = ["timeout", "--signal=KILL", str(int(self.max_lifetime)), qemu, *(a for o in opts for a in o)]
            with open(self.workdir / "qemu.log", "ab") as qlog:
                self.proc = subprocess.Popen(
                    cmd, stdin=subprocess.DEVNULL, stdout=qlog, stderr=qlog, preexec_fn=_die_with_parent
                )
            try:
                self._wait_ssh(t0, timeout, pidfile)
                break
            except VMError:
                qerr = (self.workdir / "qemu.log").read_text(errors="replace")
                self._kill()
                if "hostfwd" in qerr and attempt < 2:  # lost the race for the port: pick another
                    continue
                self._cleanup()
                raise
        self.boot_seconds = time.monotonic() - t0
        return self.boot_seconds

    def _wait_ssh(self, t0: float, timeout: float, pidfile: Path) -> None:
        assert self.proc is not None and self.workdir is not None
        while time.monotonic() - t0 < timeout:
            if self.proc.poll() is not None:
                qerr = (self.workdir / "qemu.log").read_text(errors="replace")
                raise VMError(f"qemu exited with {self.proc.returncode}: {qerr}\nconsole:\n{self.console_tail()}")
            if self.qemu_pid is None and pidfile.exists():
                with contextlib.suppress(ValueError):
                    self.qemu_pid = int(pidfile.read_text().strip())
            with contextlib.suppress(subprocess.TimeoutExpired):
                r = subprocess.run(
                    [*self._ssh_base(connect_timeout=5, mux="none"), "root@127.0.0.1", "true"],
                    capture_output=True,
                    timeout=20,
                    stdin=subprocess.DEVNULL,
                )
                if r.returncode == 0:
                    self._start_master()
                    return
            time.sleep(1)
        raise VMError(f"no ssh after {timeout:.0f}s; console:\n{self.console_tail()}")

    def shutdown(self) -> None:
        """Kill qemu (by its PID) and delete the overlay.  Idempotent."""
        if self.workdir is not None and (self.workdir / "ssh.sock").exists():
            subprocess.run(
                [*self._ssh_base(), "-O", "exit", "root@127.0.0.1"], capture_output=True, timeout=10, check=False
            )
        self._kill()
        self._cleanup()

    def _kill(self) -> None:
        if self.proc is None:
            return
        pid = self.qemu_pid
        if pid is None and self.workdir is not None:
            with contextlib.suppress(FileNotFoundError, ValueError):
                pid = int((self.workdir / "qemu.pid").read_text().strip())
        if pid is not None and self.proc.poll() is None:
            # The guest disk is a throwaway overlay: no need for a clean poweroff.
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            # qemu never wrote its pidfile: end the `timeout` wrapper we started (it passes the signal on).
            self.proc.terminate()
            self.proc.wait(timeout=30)
        self.proc = None
        self.qemu_pid = None

    def _cleanup(self) -> None:
        if self.workdir is not None and not os.environ.get("SANDBOXD_VM_KEEP"):
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None

    # -- ssh ---------------------------------------------------------------

    def _start_master(self) -> None:
        """One ssh connection for the whole session (a handshake costs ~1 s under TCG).
        -f puts it in the background once logged in; shutdown() ends it with -O exit.
        Other ssh calls fall back to their own connection if it is gone."""
        subprocess.run(
            [*self._ssh_base(mux="master"), "-N", "-f", "root@127.0.0.1"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=60,
            check=False,
        )

    def _ssh_base(self, connect_timeout: int = 10, mux: str = "client") -> list[str]:
        assert self.workdir is not None
        sock = self.workdir / "ssh.sock"
        if mux == "none":
            mux_opts = ["-o", "ControlMaster=no", "-o", "ControlPath=none"]
        elif mux == "master":
            mux_opts = ["-o", "ControlMaster=yes", "-o", f"ControlPath={sock}", "-o", "ControlPersist=yes"]
        else:
            mux_opts = ["-o", "ControlMaster=no", "-o", f"ControlPath={sock}"]
        opts = {
            "IdentitiesOnly": "yes",
            "BatchMode": "yes",
            # A fresh host key every image build, and a different port every boot.
            "StrictHostKeyChecking": "no",
            "UserKnownHostsFile": "/dev/null",
            "LogLevel": "ERROR",
            "GSSAPIAuthentication": "no",
            "ConnectTimeout": str(connect_timeout),
            "ServerAliveInterval": "10",
            "ServerAliveCountMax": "6",
        }
        argv = ["ssh", "-i", str(self.key), "-p", str(self.port), "-F", "/dev/null"]
        for k, v in opts.items():
            argv += ["-o", f"{k}={v}"]
        return argv + mux_opts

    def _ssh_argv(self, remote: str, connect_timeout: int = 10) -> list[str]:
        return [*self._ssh_base(connect_timeout), "root@127.0.0.1", remote]

    @staticmethod
    def remote_command(cmd: list[str] | str) -> str:
        """The one string ssh hands to the guest's shell.  A list is an argv,
        quoted with shlex.join; a str is a shell script, passed as the single
        argument of `sh -c` (also quoted), so no caller string is spliced in raw."""
        if isinstance(cmd, str):
            return shlex.join(["sh", "-c", cmd])
        if not cmd:
            raise ValueError("empty command")
        return shlex.join(cmd)

    def run(
        self,
        cmd: list[str] | str,
        timeout: float = 600.0,
        check: bool = False,
        input: bytes | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run a command in the guest as root; output decoded as text (errors replaced)."""
        if self.proc is None:
            raise VMError("VM not booted")
        argv = self._ssh_argv(self.remote_command(cmd))
        r = subprocess.run(
            argv,
            input=input if input is not None else b"",
            capture_output=True,
            timeout=timeout,
        )
        out = subprocess.CompletedProcess(
            cmd, r.returncode, r.stdout.decode(errors="replace"), r.stderr.decode(errors="replace")
        )
        if check and r.returncode != 0:
            raise subprocess.CalledProcessError(r.returncode, cmd, out.stdout, out.stderr)
        return out

    def copy_in(self, local_dir: Path, remote_dir: str, exclude: tuple[str, ...] = DEFAULT_EXCLUDES) -> None:
        """Copy a directory's contents into the guest (tar over ssh); remote_dir is created."""
        if self.proc is None:
            raise VMError("VM not booted")
        tar = ["tar", "-C", str(local_dir), "-cf", "-"]
        tar += [f"--exclude={pat}" for pat in exclude]
        remote = self.remote_command(
            ["sh", "-c", 'mkdir -p "$1" && exec tar -C "$1" --no-same-owner -xf -', "sh", remote_dir]
        )
        with subprocess.Popen([*tar, "."], stdout=subprocess.PIPE) as src:
            r = subprocess.run(self._ssh_argv(remote), stdin=src.stdout, capture_output=True, timeout=600)
            assert src.stdout is not None
            src.stdout.close()
        if src.returncode != 0 or r.returncode != 0:
            raise VMError(
                f"copy_in {local_dir} -> {remote_dir}: tar {src.returncode}, ssh {r.returncode}: {r.stderr!r}"
            )

    def copy_out(self, remote_dir: str, local_dir: Path) -> None:
        """Copy a guest directory's contents to the host (tar over ssh)."""
        local_dir.mkdir(parents=True, exist_ok=True)
        remote = self.remote_command(["tar", "-C", remote_dir, "-cf", "-", "."])
        with subprocess.Popen(self._ssh_argv(remote), stdout=subprocess.PIPE) as src:
            r = subprocess.run(["tar", "-C", str(local_dir), "-xf", "-"], stdin=src.stdout, capture_output=True)
            assert src.stdout is not None
            src.stdout.close()
        if src.returncode != 0 or r.returncode != 0:
            raise VMError(f"copy_out {remote_dir} -> {local_dir}: ssh {src.returncode}, tar {r.returncode}")
