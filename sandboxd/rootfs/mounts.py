"""What a box sees as its root filesystem.

A rootfs is a list of read-only bind mounts and symlinks laid onto the box's
own small root tmpfs.  The embedded default is the host's /usr plus the few
/etc entries programs need; a built per-language tree is just another list.
/etc/passwd and /etc/group are generated per box (they name the box uid), so
no host account data leaks in.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

# /etc entries programs need: the dynamic loader, name resolution of
# localhost, alternatives (java, cc, ...), TLS roots, time zone, runtime
# config that packages keep under /etc.  Secrets (shadow, ssh, sandboxd's own
# config) are deliberately absent.
HOST_ETC = (
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "alternatives",
    "nsswitch.conf",
    "localtime",
    "timezone",
    "ssl/certs",
    "ca-certificates.conf",
    "mime.types",
    "java-17-openjdk",
    "python3",
    "python3.11",
    "gcc",
    "protocols",
    "services",
)


@dataclass(frozen=True)
class Rootfs:
    name: str
    binds: tuple[tuple[str, str], ...]  # (host source, box target)
    links: tuple[tuple[str, str], ...] = ()  # (target, box link path)
    files: tuple[tuple[str, str], ...] = field(default=())  # extra generated files

    def ops(self, uid: int, gid: int) -> list[tuple[str, ...]]:
        out: list[tuple[str, ...]] = []
        for src, dst in self.binds:
            out.append(("B", src, dst))
        for target, link in self.links:
            out.append(("L", target, link))
        passwd = f"root:x:0:0:root:/root:/usr/sbin/nologin\nsandbox:x:{uid}:{gid}:sandbox:/box:/bin/sh\n"
        group = f"root:x:0:\nsandbox:x:{gid}:\n"
        hosts = "127.0.0.1\tlocalhost sandbox\n::1\tlocalhost ip6-localhost ip6-loopback\n"
        for path, content in (("/etc/passwd", passwd), ("/etc/group", group), ("/etc/hosts", hosts), *self.files):
            out.append(("F", path, content))
        return out

    @property
    def digest(self) -> str:
        return hashlib.sha256(repr(self).encode()).hexdigest()[:12]


TOP_DIRS = ("usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32")


def from_tree(root: Path, name: str) -> Rootfs:
    """A rootfs laid out like `root`: its top-level system dirs and the /etc
    entries programs need, read-only.  Symlinks are recreated as symlinks in
    the box (resolved there, inside the tree), never resolved on the host."""
    binds: list[tuple[str, str]] = []
    links: list[tuple[str, str]] = []
    entries = [(d, f"/{d}") for d in TOP_DIRS] + [(f"etc/{e}", f"/etc/{e}") for e in HOST_ETC]
    for rel, dst in entries:
        p = root / rel
        if p.is_symlink():
            links.append((os.readlink(p), dst))
        elif p.exists():
            binds.append((str(p), dst))
    if not any(dst == "/usr" for _, dst in binds):
        raise ValueError(f"rootfs {name}: {root}/usr is not a directory")
    return Rootfs(name, tuple(binds), tuple(links))


def host_default() -> Rootfs:
    """The embedded default: the host's own /usr (+ merged-usr links, /etc entries)."""
    return from_tree(Path("/"), "host")
