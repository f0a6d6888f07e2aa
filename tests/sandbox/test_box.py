"""A box on real namespaces, cgroups and seccomp: isolation and limits."""

from __future__ import annotations

import os
import sys
import threading
from typing import Any

from box_fixtures import SyncEngine

from sandboxd.sandbox.box import Box
from sandboxd.schema import FileIn, Limits, MiB, RunRequest, RunResult


def sh(engine: SyncEngine, script: str, **kw: object) -> tuple[str, str, str]:
    r = engine.run(["sh", "-c", script], **kw)
    return r.status, r.stdout.decode(), r.stderr.decode()


def test_runs_as_unprivileged_uid_without_capabilities(engine: SyncEngine) -> None:
    st, out, _ = sh(engine, "id -u; id -g; grep -E '^(CapEff|CapBnd|NoNewPrivs|Seccomp):' /proc/self/status")
    assert st == "ok"
    lines = out.split()
    uid = int(lines[0])
    assert uid >= 100000 and uid != os.getuid()
    assert "CapEff:\t0000000000000000" in out.replace(" ", "\t") or "0000000000000000" in out
    fields = dict(line.split(":\t") for line in out.splitlines()[2:])
    assert fields["CapEff"] == "0000000000000000"
    assert fields["CapBnd"] == "0000000000000000"
    assert fields["NoNewPrivs"] == "1"
    assert fields["Seccomp"] == "2"


def test_sees_only_its_own_processes(engine: SyncEngine) -> None:
    st, out, _ = sh(engine, "ls /proc | grep -E '^[0-9]+$' | wc -l; cat /proc/1/cmdline | wc -c")
    assert st == "ok"
    nprocs, _ = out.split()
    # sh, ls, grep, wc (+ the agent, hidden by hidepid=2 as another uid).
    assert int(nprocs) <= 5, out
    assert os.getpid() > 1


def test_rootfs_is_read_only_and_host_is_invisible(engine: SyncEngine) -> None:
    script = "touch /usr/x /etc/x /x 2>&1; ls /root /home /var 2>&1; cat /etc/shadow 2>&1; echo done"
    st, out, _ = sh(engine, script)
    assert st == "ok"
    assert out.count("Read-only file system") == 3, out
    assert "shadow" in out and "No such file" in out
    assert out.rstrip().endswith("done")


def test_only_loopback_network(engine: SyncEngine) -> None:
    st, out, _ = sh(engine, "ls /sys/class/net 2>/dev/null || cat /proc/net/dev")
    assert st == "ok"
    assert "lo" in out and "eth" not in out and "veth" not in out
    r = engine.source(
        "python3",
        "import socket\n"
        "s=socket.socket(); s.settimeout(1)\n"
        "try:\n    s.connect(('198.18.0.1', 80)); print('connected')\n"
        "except OSError as e:\n    print('refused', e.errno)\n"
        "l=socket.socket(); l.bind(('127.0.0.1', 0)); l.listen(); c=socket.create_connection(l.getsockname())\n"
        "print('lo ok')\n",
    ).run
    assert r is not None and r.status == "ok", r
    assert b"refused" in r.stdout and b"lo ok" in r.stdout


def test_masked_proc_and_minimal_dev(engine: SyncEngine) -> None:
    script = "cat /proc/kcore /proc/keys 2>/dev/null | wc -c; cat /proc/1/environ >/dev/null 2>&1 || echo hidden"
    script += "; ls /dev"
    st, out, _ = sh(engine, script)
    assert st == "ok"
    kcore, hidden, *devs = out.split()
    assert kcore == "0" and hidden == "hidden"
    assert {"null", "zero", "full", "random", "urandom", "shm"} <= set(devs)
    assert not set(devs) & {"sda", "vda", "mem", "kmsg", "tty", "console"}


def test_work_dirs_are_empty_at_start_of_every_run(engine: SyncEngine) -> None:
    plant = "touch /box/left /tmp/left /dev/shm/left; ls -A /box /tmp /dev/shm"
    for _ in range(4):  # with 2 warm boxes, every box is hit twice
        st, out, _ = sh(engine, plant)
        assert st == "ok"
        assert out.split() == ["/box:", "left", "/dev/shm:", "left", "/tmp:", "left"], out


def test_processes_do_not_survive_the_run(engine: SyncEngine) -> None:
    st, _, _ = sh(engine, "(setsid sh -c 'trap \"\" TERM HUP; sleep 100' &) ; echo started")
    assert st == "ok"
    for _ in range(3):
        st, out, _ = sh(engine, "ps -e -o comm= 2>/dev/null || ls /proc | grep -E '^[0-9]+$'")
        assert "sleep" not in out


def test_cpu_time_limit(engine: SyncEngine) -> None:
    r = engine.run(["sh", "-c", "while :; do :; done"], limits=Limits(cpu_time=0.3))
    assert r.status == "time_limit"
    assert r.cpu_time >= 0.3 and r.message != "wall time limit"
    assert r.wall_time < 10  # ended by the CPU limit, not hung


def test_cpu_time_counts_every_thread_and_child(engine: SyncEngine) -> None:
    script = "for i in 1 2 3 4; do (while :; do :; done) & done; wait"
    r = engine.run(["sh", "-c", script], limits=Limits(cpu_time=0.5, wall_time=30))
    # The parent only waits: only the children's CPU, summed by the cgroup,
    # can end this run before the (long) wall limit.
    assert r.status == "time_limit" and r.message != "wall time limit", r
    assert r.cpu_time >= 0.5


def test_wall_time_limit_for_sleep(engine: SyncEngine) -> None:
    r = engine.run(["sleep", "10"], limits=Limits(cpu_time=1, wall_time=0.5))
    assert r.status == "time_limit"
    assert r.wall_time >= 0.5 and r.message == "wall time limit"
    assert r.wall_time < 10 and r.cpu_time < 0.5


def test_memory_limit(engine: SyncEngine) -> None:
    src = "x = []\nwhile True:\n    x.append(bytearray(1 << 20))\n"
    r = engine.source("python3", src, limits=Limits(memory=64 * MiB)).run
    assert r is not None and r.status == "memory_limit", r
    assert 48 * MiB <= r.memory <= 64 * MiB


def test_memory_limit_in_c_touching_pages(engine: SyncEngine) -> None:
    src = """#include <stdlib.h>
#include <string.h>
int main(void) { for (;;) { char *p = malloc(1 << 20); if (!p) return 3; memset(p, 1, 1 << 20); } }
"""
    r = engine.source("c", src, limits=Limits(memory=32 * MiB)).run
    assert r is not None and r.status == "memory_limit", r


def test_output_limit_stops_a_flood(engine: SyncEngine) -> None:
    r = engine.run(["yes"], limits=Limits(output=4096, cpu_time=5))
    assert r.status == "output_limit"
    assert r.stdout_truncated and len(r.stdout) == 4096
    assert r.wall_time < 10  # stopped at the limit, not at the CPU limit


def test_output_past_a_pipes_capacity_arrives_whole(engine: SyncEngine) -> None:
    # (past agentchan.PIPE_BYTES: the pipes are watched from WATCH_AFTER into a run, a
    # writer blocked on a full pipe before that goes on once they are)
    script = "head -c 1500000 /dev/zero | tr '\\0' o; head -c 300000 /dev/zero | tr '\\0' e >&2"
    r = engine.run(["sh", "-c", script], limits=Limits(output=2 * MiB))
    assert r.status == "ok", r
    assert r.stdout == b"o" * 1500000 and r.stderr == b"e" * 300000
    assert not r.stdout_truncated


def test_fork_bomb_is_contained_and_box_stays_usable(engine: SyncEngine) -> None:
    r = engine.run(["sh", "-c", "f() { f | f & }; f"], limits=Limits(procs=16, cpu_time=1, wall_time=2))
    assert r.status != "internal_error", r
    assert r.wall_time < 10
    for _ in range(3):
        assert engine.run(["true"]).status == "ok"


def test_disk_fill_hits_the_tmpfs_limit(engine: SyncEngine) -> None:
    # Per-file size is capped separately (RLIMIT_FSIZE), so fill with many files;
    # tmpfs pages are charged to the run's memory, so give it room.
    script = "for i in 1 2 3 4 5 6; do dd if=/dev/zero of=/box/f$i bs=1M count=60 2>&1; done; df -k /box | tail -1"
    st, out, _ = sh(engine, script, limits=Limits(memory=512 * MiB))
    assert st == "ok"
    assert "No space left" in out
    size_kb = int(out.split("\n")[-2].split()[1])
    assert size_kb <= 256 * 1024


def test_file_size_limit(engine: SyncEngine) -> None:
    r = engine.run(["dd", "if=/dev/zero", "of=/box/f", "bs=1M", "count=10"], limits=Limits(file_size=1 * MiB))
    assert r.status == "output_limit" and r.signal == 25


def test_nonzero_exit_and_signals(engine: SyncEngine) -> None:
    assert engine.run(["sh", "-c", "exit 7"]).exit_code == 7
    r = engine.run(["sh", "-c", "kill -SEGV $$"])
    assert r.status == "signaled" and r.signal == 11
    r = engine.run(["/nonexistent"])
    assert r.status == "nonzero_exit" and r.exit_code == 127 and "cannot execute" in r.message


def test_seccomp_denials(engine: SyncEngine) -> None:
    src = r"""
#define _GNU_SOURCE
#include <errno.h>
#include <sched.h>
#include <stdio.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <linux/bpf.h>
#define TRY(name, call) do { long r_ = (long)(call); printf("%s %ld %d\n", name, r_, r_ < 0 ? errno : 0); } while (0)
int main(void) {
    TRY("unshare", unshare(CLONE_NEWUSER));
    TRY("mount", mount("none", "/tmp", "tmpfs", 0, 0));
    TRY("netlink", socket(AF_NETLINK, SOCK_RAW, 0));
    TRY("bpf", syscall(SYS_bpf, BPF_PROG_LOAD, 0, 0));
    TRY("io_uring", syscall(SYS_io_uring_setup, 1, 0));
    printf("inet %d\n", socket(AF_INET, SOCK_STREAM, 0) >= 0);
    fflush(stdout);
    syscall(SYS_ptrace, 0, 0, 0, 0);
    printf("not reached\n");
    return 0;
}
"""
    r = engine.source("c", src).run
    assert r is not None
    assert r.status == "bad_syscall", r
    out = r.stdout.decode()
    for name in ("unshare", "mount", "netlink", "bpf", "io_uring"):
        assert f"{name} -1 1\n" in out, out  # EPERM
    assert "inet 1" in out and "not reached" not in out


def test_files_in_and_out(engine: SyncEngine) -> None:
    r = engine.run(
        ["sh", "-c", "tr a-z A-Z < in/data.txt > out.txt"],
        files_in=[FileIn("in/data.txt", b"hello")],
        files_out=["out.txt", "missing.txt"],
    )
    assert r.status == "ok", r
    got = {f.path: f for f in r.files}
    assert got["out.txt"].content == b"HELLO"
    assert got["missing.txt"].content is None and got["missing.txt"].error


def _hwm() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))


def test_a_file_out_is_read_into_one_buffer_not_joined_from_chunks(engine: SyncEngine) -> None:
    # On lead2 read_out kept 1 MiB chunks and joined them: twice the file at once.
    size = 32 << 20
    make = ["sh", "-c", f"head -c {size} /dev/urandom > f"]
    limits = Limits(file_size=size, memory=128 << 20)
    engine.run(make, files_out=["f"], limits=limits)  # (warm: the allocator's first large blocks)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = _hwm()
    r = engine.run(make, files_out=["f"], limits=limits)
    grown = _hwm() - before
    assert r.status == "ok" and len(r.files[0].content or b"") == size, r.files[0].error
    assert grown < size * 3 // 2, f"a {size >> 20} MiB file out grew the peak by {grown / (1 << 20):.1f} MiB"


def test_files_out_are_read_off_the_event_loop_and_room_asked_on_it(engine: SyncEngine) -> None:
    """Files out are read on a thread (os.read of 64 MiB held the loop, and
    /healthz, 360 ms); the budget's room() is still answered on the loop's
    thread, while the reading thread waits for it inside read_files_out."""
    asked: list[tuple[bool, bool, int]] = []

    def reading_elsewhere() -> bool:
        me = threading.get_ident()
        for ident, frame in sys._current_frames().items():
            f: Any = frame
            while ident != me and f is not None:
                if f.f_code.co_name == "read_files_out":
                    return True
                f = f.f_back
        return False

    def room(n: int) -> str | None:
        asked.append((threading.get_ident() == threading.main_thread().ident, reading_elsewhere(), n))
        return None

    size = 8 << 20
    make = ["sh", "-c", f"head -c {size} /dev/zero > f"]
    req = RunRequest(cmd=make, files_out=["f"], limits=Limits(file_size=size, memory=64 << 20))
    r = engine.call(engine.engine.run(req, room=room))
    assert r.status == "ok" and len(r.files[0].content or b"") == size, r.files[0].error
    assert asked == [(True, True, size)]


def test_stdin_passes_through(engine: SyncEngine) -> None:
    data = os.urandom(1 << 20)
    r = engine.run(["sha256sum"], stdin=data)
    import hashlib

    assert r.stdout.split()[0].decode() == hashlib.sha256(data).hexdigest()


def test_files_in_never_follow_what_a_program_planted(engine: SyncEngine, tmp_path: os.PathLike[str]) -> None:
    """CVE-2024-28185 pattern: a later host-side write into a box a program touched."""

    from sandboxd.sandbox import boxfiles
    from sandboxd.schema import RunRequest

    target = os.path.join(tmp_path, "host-file")
    eng = engine.engine

    async def scenario() -> list[str]:
        box = await eng.box()
        try:
            plant = f"ln -s {target} /box/x; ln -s {tmp_path} /box/d; mkfifo /box/f"
            r = await box.run(RunRequest(cmd=["sh", "-c", plant]))
            assert r.status == "ok", r
            refused = []
            for path in ("x", "d/y", "f"):
                try:
                    boxfiles.write_in(box.boxfd, path, b"pwned", False, box.uid, box.uid)
                except boxfiles.Refused as e:
                    refused.append(f"{path}: {e}")
            return refused
        finally:
            eng.release(box)

    refused = engine.call(scenario())
    assert len(refused) == 3, refused
    assert not os.path.exists(target) and not os.path.exists(os.path.join(tmp_path, "y"))


def _on_one_box(engine: SyncEngine, plant: str, probe: str) -> tuple[RunResult, RunResult, int, int]:
    """Runs `plant`, resets that very box, runs `probe` on it: both results and
    /box's device before and after (a new device = a fresh tmpfs)."""
    eng = engine.engine

    async def scenario() -> tuple[RunResult, RunResult, int, int]:
        box = await eng.box()
        try:
            dev = os.fstat(box.boxfd).st_dev
            limits = Limits(cpu_time=10, wall_time=20)
            r = await box.run(RunRequest(cmd=["python3", "-S", "-c", plant], limits=limits))
            await box.reset()
            files = [FileIn("probe.sh", probe.encode())]
            p = await box.run(RunRequest(cmd=["sh", "/box/probe.sh"], files_in=files))
            return r, p, dev, os.fstat(box.boxfd).st_dev
        finally:
            eng.release(box)

    return engine.call(scenario())


_CLEAN = (
    "find /box /tmp /dev/shm -mindepth 1 -not -name probe.sh | wc -l;"
    " python3 -S -c \"import os; print(os.listxattr('/box'))\""
)
_MESS = """
import os, socket
os.chdir('/box')
for i in range(2000):
    os.mkdir('d'); os.chdir('d')
os.chdir('/box')
os.makedirs('locked/inner'); open('locked/inner/f', 'w').close(); os.chmod('locked/inner', 0); os.chmod('locked', 0)
os.mkfifo('fifo'); socket.socket(socket.AF_UNIX).bind('sock')
"""


def test_reset_empties_in_place_whatever_a_job_leaves(engine: SyncEngine) -> None:
    # 1000 xattr names (~26 KiB): more than the agent's old 8 KiB buffer held
    # (its reset failed with ERANGE and the box was rebuilt after every run).
    plant = "import os\nfor i in range(1000): os.setxattr('/box', 'user.%020d' % i, b'')\n" + _MESS
    pool = engine.engine.pools["host"]
    recycled = pool.stats.recycled
    r, p, dev, dev_after = _on_one_box(engine, plant, _CLEAN)
    assert r.status == "ok", r
    assert (p.status, p.stdout) == ("ok", b"0\n[]\n"), p
    assert dev_after == dev  # emptied in place: the common, cheap path
    assert pool.stats.recycled == recycled


def test_reset_replaces_box_tmpfs_when_its_xattrs_cannot_be_listed(engine: SyncEngine) -> None:
    # Past 64 KiB of names the kernel lists none (E2BIG): they cannot be
    # removed by name, so /box gets a fresh tmpfs, and the daemon its new fd.
    plant = "import os\nfor i in range(12000): os.setxattr('/box', 'user.%0100d' % i, b'')\n"
    plant += "try:\n    os.listxattr('/box')\nexcept OSError as e:\n    print(e.strerror)\n"
    pool = engine.engine.pools["host"]
    recycled = pool.stats.recycled
    r, p, dev, dev_after = _on_one_box(engine, plant, _CLEAN + "; stat -c %a /box")
    assert (r.status, r.stdout) == ("ok", b"Argument list too long\n"), r
    assert (p.status, p.stdout) == ("ok", b"0\n[]\n755\n"), p  # probe.sh came in through the new fd
    assert dev_after != dev
    assert pool.stats.recycled == recycled


def test_network_namespace_is_replaced_only_after_the_network_was_used(engine: SyncEngine) -> None:
    eng = engine.engine
    probe = RunRequest(cmd=["sh", "-c", "readlink /proc/self/ns/net; echo $$"])
    quiet = RunRequest(cmd=["sh", "-c", "true; true"])
    tcp = "import socket\nl = socket.socket(); l.bind(('127.0.0.1', 0)); l.listen()\n"
    tcp += "socket.create_connection(l.getsockname())"
    # No packet at all, yet the namespace counts it (Ip OutNoRoutes): only
    # the worker's watch on IP sockets tells the reset about this run.
    unroutable = "import socket\ntry:\n    socket.socket().connect(('198.18.0.1', 80))\nexcept OSError:\n    pass"
    runs = [quiet, quiet, RunRequest(cmd=["python3", "-S", "-c", tcp]), quiet]
    runs += [RunRequest(cmd=["python3", "-S", "-c", unroutable]), quiet]
    noroutes = RunRequest(cmd=["sh", "-c", "grep Ip: /proc/net/snmp | tail -1 | cut -d' ' -f13"])

    async def scenario() -> list[tuple[str, str, str]]:
        box = await eng.box()
        try:
            seen = []
            for req in runs:
                r = await box.run(req)
                assert r.status == "ok", r
                await box.reset()
                p = await box.run(probe)
                n = await box.run(noroutes)
                await box.reset()
                ns, pid = p.stdout.decode().split()
                seen.append((ns, pid, n.stdout.decode().strip()))
            return seen
        finally:
            eng.release(box)

    seen = engine.call(scenario())
    assert [pid for _, pid, _ in seen] == ["10"] * len(runs), seen  # every run starts at the same pid
    assert [n for _, _, n in seen] == ["0"] * len(runs), seen  # OutNoRoutes: nothing of the run before
    nss = [ns for ns, _, _ in seen]
    # A run that never used the network keeps the namespace (it costs ~0.8 ms to make one).
    assert nss[0] == nss[1] and nss[2] != nss[1] and nss[3] == nss[2] and nss[4] != nss[3] and nss[5] == nss[4], seen


# Only unix sockets, no IP socket: the worker's socket watch never hears of
# these runs, so only the reset's count of the namespace's sockets tells.
_UNIX_IN_FLIGHT = """
import array, socket
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(b"\\\\0sandboxd-in-flight")
p, q = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
p.sendmsg([b"x"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [s.fileno(), p.fileno(), q.fileno()]))])
"""
_UNIX_CLOSED = "import socket\np, q = socket.socketpair(); p.send(b'x'); q.recv(1); p.close(); q.close()"
_UNIX_PROBE = """
import os, socket
print(os.readlink("/proc/self/ns/net"))
try:
    socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).bind(b"\\\\0sandboxd-in-flight")
    print("free")
except OSError as e:
    print(e.strerror)
"""


def test_unix_socket_left_in_flight_gets_the_next_run_a_fresh_network_namespace(engine: SyncEngine) -> None:
    # The in-flight cycle outlives the run's processes until the kernel's unix
    # GC frees it, host-wide and asynchronously (~1 s after here when the host
    # is quiet, sometimes before the reset when it is busy): meanwhile the
    # abstract name stays bound.  So: the name is free in every next run, and
    # within a few tries the reset finds the socket and renews the namespace.
    eng = engine.engine
    py = ["python3", "-S", "-c"]

    async def cycle(box: Box, code: str) -> tuple[str, str, str]:
        """(namespace before, namespace after, bind result after) of one run of `code`."""
        before = await box.run(RunRequest(cmd=[*py, _UNIX_PROBE]))
        await box.reset()
        r = await box.run(RunRequest(cmd=[*py, code]))
        assert r.status == "ok", r
        await box.reset()
        after = await box.run(RunRequest(cmd=[*py, _UNIX_PROBE]))
        await box.reset()
        ns_before, ns_after = before.stdout.decode().split()[0], after.stdout.decode().split()[0]
        return ns_before, ns_after, after.stdout.decode().split("\n")[1]

    async def scenario() -> tuple[list[tuple[str, str, str]], list[tuple[str, str, str]]]:
        box = await eng.box()
        try:
            quiet = [await cycle(box, _UNIX_CLOSED)]
            left = []
            for _ in range(5):
                left.append(await cycle(box, _UNIX_IN_FLIGHT))
                if left[-1][0] != left[-1][1]:
                    break
            quiet.append(await cycle(box, _UNIX_CLOSED))
            return quiet, left
        finally:
            eng.release(box)

    quiet, left = engine.call(scenario())
    assert [bound for _, _, bound in quiet + left] == ["free"] * len(quiet + left), (quiet, left)
    assert all(a == b for a, b, _ in quiet), quiet  # sockets closed by the run: the namespace is kept
    assert any(a != b for a, b, _ in left), left  # one left in flight: a new namespace before the next run
