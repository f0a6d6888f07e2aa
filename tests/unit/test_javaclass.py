"""The Java entry scan: which class a source runs and the file javac needs for it."""

from __future__ import annotations

import pytest

from sandboxd.engine.javaclass import Entry, entry

CASES = [
    ("public class Foo { public static void main(String[] a) {} }", Entry("Foo.java", "Foo")),
    ("package a.b;\npublic class P {}", Entry("P.java", "a.b.P")),
    ("class Main {} class Other {}", Entry("Main.java", "Main")),
    ("class A {} class B {}", Entry("Main.java", "A")),
    ("", Entry("Main.java", "Main")),
    # comments, strings, char literals and text blocks hide what looks like declarations
    (
        '// public class C1\n/* public class C2 { */ import java.util.*;\nclass H { String s = "public class C3 {";'
        ' char c = \'{\'; String t = """\n  public class C4 {\n  """; }\npublic final class Sol {}',
        Entry("Sol.java", "Sol"),
    ),
    # nested types are not top level; `Q.class` is an expression; annotations carry modifiers past
    (
        '@SuppressWarnings("x") public class Q { public static class Inner {} Object o = Q.class; }',
        Entry("Q.java", "Q"),
    ),
    ("@interface Ann {} record R(int x) {} public record S(int y) {}", Entry("S.java", "S")),
    ("public enum E { A, B }", Entry("E.java", "E")),
    # unbalanced or unclosed: no public type found at top level, javac will say what is wrong
    ("class Outer { public class Inner {", Entry("Main.java", "Outer")),
    ('String s = "unclosed\npublic class Z {}', Entry("Z.java", "Z")),
]


@pytest.mark.parametrize(("src", "want"), CASES)
def test_java_entry(src: str, want: Entry) -> None:
    assert entry(src.encode()) == want


def test_java_entry_name_outside_ascii_identifiers_is_left_to_javac() -> None:
    # (a file name the scan cannot vouch for: Main.java, and javac's own message)
    assert entry("public class Ünï {}".encode()) == Entry("Main.java", "Main")
    assert entry(("public class " + "A" * 300 + " {}").encode()) == Entry("Main.java", "Main")


def test_java_entry_scan_is_bounded() -> None:
    from sandboxd.engine.javaclass import SCAN_MAX

    pad = b"// " + b"x" * SCAN_MAX + b"\n"
    assert entry(b"public class Early {}\n" + pad) == Entry("Early.java", "Early")
    assert entry(pad + b"public class Late {}\n") == Entry("Main.java", "Main")
