"""`sandboxd rootfs build LANG`: a minimal tree from the language's recipe
(mmdebstrap, stripped, named by its content hash), its self-test in an Engine
on the new tree, then the switch and the cleanup (sandboxd.rootfs.store).

The app layer's: verifying needs an Engine, which runs on rootfs trees.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import stat
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable
from pathlib import Path

import msgspec

from sandboxd.engine.engine import Engine, EngineConfig
from sandboxd.rootfs.store import lang_dir, remove_unused, size_of, switch

# Always removed: what a program never needs at run time.
ALWAYS_EXCLUDE = [
    "/usr/share/doc/*",
    "/usr/share/man/*",
    "/usr/share/info/*",
    "/usr/share/locale/*",
    "/usr/share/lintian/*",
    "/usr/share/bug/*",
]
ALWAYS_STRIP = [
    "var/lib/dpkg",
    "var/lib/apt",
    "var/cache",
    "var/log",
    "usr/bin/dpkg*",
    "usr/bin/update-alternatives",
    "usr/sbin/dpkg*",
    "etc/dpkg",
    "etc/apt",
    "usr/share/dpkg",
    "usr/lib/dpkg",
]
CHROOT = shutil.which("chroot") or "/usr/sbin/chroot"
RECIPES = Path(__file__).resolve().parents[2] / "rootfs"

Say = Callable[[str], None]


class Recipe(msgspec.Struct, forbid_unknown_fields=True):
    packages: list[str]
    strip: list[str] = []
    post: list[list[str]] = []
    suite: str = "bookworm"


class BuildError(RuntimeError):
    pass


def recipe(lang: str, recipes: Path = RECIPES) -> Recipe:
    p = recipes / f"{lang}.toml"
    if not p.exists():
        known = sorted(f.stem for f in recipes.glob("*.toml"))
        raise BuildError(f"no rootfs recipe for {lang!r} in {recipes}; known: {', '.join(known)}")
    try:
        return msgspec.convert(tomllib.loads(p.read_text()), Recipe)
    except (tomllib.TOMLDecodeError, msgspec.ValidationError) as e:
        raise BuildError(f"{p}: {e}") from None


def _remove(tree: Path, pattern: str) -> None:
    # Our own tree, never touched by a box: globbing it is safe.
    for p in tree.glob(pattern):
        if p.is_symlink() or p.is_file():
            p.unlink()
        elif p.is_dir():
            shutil.rmtree(p)


def _clear_setid(tree: Path) -> int:
    n = 0
    for dp, dns, fns in os.walk(tree):
        for name in dns + fns:
            p = os.path.join(dp, name)
            st = os.lstat(p)
            if not stat.S_ISLNK(st.st_mode) and st.st_mode & (stat.S_ISUID | stat.S_ISGID):
                os.chmod(p, stat.S_IMODE(st.st_mode) & ~(stat.S_ISUID | stat.S_ISGID))
                n += 1
    return n


def content_hash(tree: Path) -> str:
    h = hashlib.sha256()
    for dp, dns, fns in os.walk(tree):
        dns.sort()
        for name in sorted(fns + [d for d in dns if os.path.islink(os.path.join(dp, d))]):
            p = os.path.join(dp, name)
            st = os.lstat(p)
            rel = os.path.relpath(p, tree)
            h.update(f"{rel}\0{stat.S_IMODE(st.st_mode):o}\0".encode())
            if stat.S_ISLNK(st.st_mode):
                h.update(b"L" + os.readlink(p).encode())
            elif stat.S_ISREG(st.st_mode):
                with open(p, "rb") as f:
                    h.update(hashlib.file_digest(f, "sha256").digest())
    return h.hexdigest()[:16]


def breakdown(tree: Path, depth: int = 3, top: int = 8) -> list[tuple[str, int]]:
    """Where the bytes go: the largest directories `depth` levels down."""
    sizes: dict[str, int] = {}
    for dp, _, fns in os.walk(tree):
        rel = os.path.relpath(dp, tree).split(os.sep)
        key = "/".join(rel[:depth]) if rel != ["."] else "."
        for f in fns:
            st = os.lstat(os.path.join(dp, f))
            if stat.S_ISREG(st.st_mode):
                sizes[key] = sizes.get(key, 0) + st.st_blocks * 512
    return sorted(sizes.items(), key=lambda kv: -kv[1])[:top]


def build(lang: str, state: Path, say: Say, recipes: Path = RECIPES) -> Path:
    """Build, strip and name a tree; returns its final path (not yet current)."""
    rec = recipe(lang, recipes)
    if shutil.which("mmdebstrap") is None:
        raise BuildError("mmdebstrap is not installed (apt-get install mmdebstrap)")
    d = lang_dir(state, lang)
    d.mkdir(parents=True, exist_ok=True)
    tmp = d / f".build-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    t0 = time.monotonic()
    cmd = ["mmdebstrap", "--variant=extract", f"--include={','.join(rec.packages)}"]
    cmd += [f"--dpkgopt=path-exclude={p}" for p in ALWAYS_EXCLUDE]
    cmd += [rec.suite, str(tmp)]
    say(f"[1/5] mmdebstrap {rec.suite}: {' '.join(rec.packages)}")
    try:
        with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as p:
            assert p.stdout is not None
            tail: list[str] = []
            for line in p.stdout:
                line = line.rstrip()
                tail = [*tail[-20:], line]
                if line.startswith("I: "):
                    say(f"      {line[3:]}")
        if p.returncode != 0:
            raise BuildError(f"mmdebstrap failed ({p.returncode}):\n" + "\n".join(tail))
        say(f"[2/5] stripping ({size_of(tmp) >> 20} MiB unpacked)")
        for pattern in ALWAYS_STRIP + rec.strip:
            _remove(tmp, pattern)
        for argv in rec.post:
            say(f"[3/5] in the tree: {' '.join(argv)}")
            r = subprocess.run([CHROOT, str(tmp), *argv], capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"})
            if r.returncode != 0:
                raise BuildError(f"post step {argv} failed: {r.stderr[-2000:]}")
        cleared = _clear_setid(tmp)
        say(f"[4/5] hashing ({cleared} setuid/setgid bits cleared)")
        digest = content_hash(tmp)
        final = d / digest
        if final.exists():
            say(f"      identical to the existing tree {digest}")
            shutil.rmtree(tmp)
        else:
            os.rename(tmp, final)
        say(f"      {final}: {size_of(final) / (1 << 20):.1f} MiB, built in {time.monotonic() - t0:.0f} s")
        return final
    except BaseException:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
        raise


async def verify(lang: str, tree: Path, state: Path) -> str | None:
    """The language's self-test in a box on the new tree; None when it passes."""
    cfg = EngineConfig(
        instance=f"rootfs-verify-{os.getpid()}", pool_size=2, state_dir=state, rootfs_override={lang: tree}
    )
    eng = await Engine.start(cfg)
    try:
        if lang not in eng.languages:
            return f"unknown language {lang!r}"
        eng.languages = {lang: eng.languages[lang]}
        failed = await eng.selftest()
        return failed.get(lang)
    finally:
        await eng.close()


def main_build(lang: str, state: Path, recipes: Path = RECIPES) -> int:
    def say(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    try:
        tree = build(lang, state, say, recipes)
        say("[5/5] self-test in a box on the new tree")
        err = asyncio.run(verify(lang, tree, state))
        if err is not None:
            say(f"self-test failed, {lang} stays on its current tree: {err}")
            return 1
        switch(state, lang, tree)
        removed = remove_unused(state, lang, keep={tree})
        say(f"{lang} now runs on {tree.name}; send SIGHUP to a running daemon to switch its pool")
        for p in removed:
            say(f"removed unused tree {p.name}")
        for where, size in breakdown(tree):
            say(f"      {size / (1 << 20):7.1f} MiB  {where}")
        return 0
    except BuildError as e:
        say(f"sandboxd: {e}")
        return 1
