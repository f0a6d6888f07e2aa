"""Every language on the host rootfs: self-test, A+B, TLE, MLE, RE (exit and crash), CE."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from box_fixtures import SyncEngine

from sandboxd.languages import load_dir
from sandboxd.schema import Limits, MiB

LANGS = load_dir()
DATA = Path(__file__).parent / "languages"
PROGRAMS = {p.stem: tomllib.loads(p.read_text()) for p in DATA.glob("*.toml")}
LIMITS = Limits(cpu_time=1.0, wall_time=10.0, memory=256 * MiB)


@pytest.mark.parametrize("lid", sorted(LANGS))
def test_language(engine: SyncEngine, lid: str) -> None:
    lang, progs = LANGS[lid], PROGRAMS[lid]

    def run(prog: str, stdin: bytes = b"", limits: Limits = LIMITS) -> tuple[str, bytes, str]:
        s = engine.source(lid, progs.get(prog, prog), stdin=stdin, limits=limits)
        assert s.compile is None or s.compile.status == "ok", f"{lid} {prog}: compile: {s.compile}"
        assert s.run is not None
        return s.run.status, s.run.stdout, f"{s.run}"[:800]

    st, out, info = run(lang.selftest, b"echo me\n\xc3\xa9")
    assert (st, out) == ("ok", b"echo me\n\xc3\xa9"), info
    st, out, info = run("aplusb", b"123456789012 987654321098\n")
    assert (st, out.strip()) == ("ok", b"1111111110110"), info
    st, _, info = run("tle", limits=Limits(cpu_time=0.5, wall_time=5.0, memory=256 * MiB))
    assert st == "time_limit", info
    st, _, info = run("mle", limits=Limits(cpu_time=5.0, wall_time=15.0, memory=128 * MiB))
    assert st == "memory_limit", info
    st, _, info = run("exit3")
    assert st == "nonzero_exit", info
    st, _, info = run("crash")
    assert st in ("signaled", "nonzero_exit"), info
    if lang.compile:
        s = engine.source(lid, progs["ce"])
        assert s.run is None and s.compile is not None and s.compile.status == "nonzero_exit"
        assert progs["ce_message"] in (s.compile.stdout + s.compile.stderr).decode(errors="replace")


@pytest.mark.parametrize("lid", ["java", "javascript"])
def test_managed_runtime_hello_world_fits_256_mb(engine: SyncEngine, lid: str) -> None:
    src = {"java": 'public class Main { public static void main(String[] a) { System.out.println("hi"); } }'}
    s = engine.source(lid, src.get(lid, 'console.log("hi")'), limits=Limits(memory=256 * MiB))
    assert s.run is not None and s.run.status == "ok" and s.run.stdout == b"hi\n", s.run
    assert s.run.memory < 128 * MiB


def test_limits_above_a_language_maximum_are_refused(engine: SyncEngine) -> None:
    from sandboxd.schema import SchemaError

    with pytest.raises(SchemaError, match=r"limits\.cpu_time"):
        engine.source("python3", "print(1)", limits=Limits(cpu_time=100.0))


JAVA_ENTRIES = {
    # public class of any name (javac wants it in Foo.java: the engine names the file after it)
    'public class Foo { public static void main(String[] a) { System.out.println("foo"); } }': "foo",
    # in a package: the jar's Main-Class is package-qualified
    'package x.y;\npublic class Sol { public static void main(String[] a) { System.out.println("sol"); } }': "sol",
    # helpers first, braces and a decoy class in a comment and a string
    (
        "import java.util.*;\n// public class Decoy {\n"
        'class Helper { static String s() { return "}public class X{"; } }\n'
        "/* public class Decoy2 { */ public final class Program {\n"
        "  public static void main(String[] a) { System.out.println(Helper.s().length()); } }"
    ): "16",
    # no public class: Main if declared (what a native program names), else the first one
    'class Util {}\nclass Main { public static void main(String[] a) { System.out.println("main"); } }': "main",
    'class First { public static void main(String[] a) { System.out.println("first"); } }': "first",
}


@pytest.mark.parametrize("src", list(JAVA_ENTRIES))
def test_java_runs_any_public_class_name(engine: SyncEngine, src: str) -> None:
    s = engine.source("java", src, limits=LIMITS)
    assert s.compile is not None and s.compile.status == "ok", s.compile
    assert s.run is not None and s.run.status == "ok" and s.run.stdout.decode().strip() == JAVA_ENTRIES[src], s.run
