"""Which class a Java source declares to run, and the file name javac needs for it.

javac insists that a public top-level class `Foo` lives in `Foo.java`, so a
program saved as the language's `Main.java` compiles only if its public class
is `Main`.  Piston runs any public class (its Java package uses the source
launcher, `java file.java`, which skips that check), and so do its clients'
programs.  We keep javac (compiled once, cached, then run many times, where
the source launcher compiles again on every run): the entry file is named
after the program's public class, and the compile script is told the class to
put in the jar's manifest through `$SANDBOXD_MAIN_CLASS`, never inside the
script string.

Why a scan of the source rather than "compile whatever name, then look for
the class with a main": javac refuses the file before any class exists, so
the name must be known before compiling, and that takes reading the source.
The scan is lexical and small: it skips comments, string, text-block and
char literals, tracks brace and parenthesis depth, and reads the `package`
clause and the type declarations at depth 0 with their modifiers.  What it
cannot tell (a name outside ASCII identifiers, an over-long one) falls back
to `Main`, i.e. to javac's own error message about the file name; so does a
declaration past the first SCAN_MAX bytes (the scan's work is bounded).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_TYPES = frozenset({"class", "interface", "enum", "record"})
_IDENT = re.compile(r"[A-Za-z_$][A-Za-z0-9_$]{0,127}")
_QUALIFIED = re.compile(r"[A-Za-z_$][A-Za-z0-9_$]*(\.[A-Za-z_$][A-Za-z0-9_$]*)*")
# Comments, text blocks, string and char literals (an unclosed one ends at the end of
# the text, or of its line).  Each pattern skips what cannot start a token in C
# (a greedy class), then takes one token as group 1, or one stray character.
_SKIPPED = (
    r"""//[^\n]*|/\*.*?(?:\*/|\Z)|\"\"\"(?:\\.|[^\\])*?(?:\"\"\"|\Z)"""
    r"""|"(?:\\.|[^"\\\n])*(?:"|$)|'(?:\\.|[^'\\\n])*(?:'|$)"""
)
# At depth 0: also the words and the punctuation the scan reads.
_TOKEN = re.compile(r"""[^/"'{}();.@\w$]*(""" + _SKIPPED + r"""|[\w$]+|[{}();.@]|.)""", re.S | re.M)
# Inside a body, where only braces count.
_INNER = re.compile(r"""[^/"'{}]*(""" + _SKIPPED + r"""|[{}]|.)""", re.S | re.M)
DEFAULT = "Main"
# Bytes of a source the scan reads (it runs on the event loop, once per compile):
# a public class declared past them is not seen (javac then says so).
SCAN_MAX = 1 << 20


@dataclass(frozen=True)
class Entry:
    file: str  # what the source is saved as (javac: the public class's name)
    main_class: str  # the manifest's Main-Class, package-qualified


@dataclass(frozen=True)
class _Type:
    name: str
    public: bool


def entry(source: bytes, default_file: str = DEFAULT + ".java") -> Entry:
    """The file name and main class of a Java source: its public top-level class
    if it has one; else `Main` if it declares one at top level (what a program
    written for the native API runs); else its first top-level class (what the
    source launcher, hence Piston, runs)."""
    text = source[:SCAN_MAX].decode("utf-8", errors="replace")
    package, types = _scan(text)
    public = next((t.name for t in types if t.public), None)
    if public is not None:
        chosen, file = public, f"{public}.java"
    else:
        names = [t.name for t in types]
        chosen = DEFAULT if DEFAULT in names or not names else names[0]
        file = default_file
    if package and len(package) + len(chosen) < 256 and _QUALIFIED.fullmatch(package):
        return Entry(file, f"{package}.{chosen}")
    return Entry(file, chosen)


def _scan(text: str) -> tuple[str, list[_Type]]:
    """(package name or "", top-level type declarations in order)."""
    words = _top_level_words(text)
    package = ""
    types: list[_Type] = []
    modifiers: list[str] = []
    for i, w in enumerate(words):
        if w in (";", "}"):
            modifiers = []
        elif w == "package" and not types and i + 1 < len(words):
            package = "".join(_dotted(words, i + 1))
        elif w in _TYPES and i + 1 < len(words) and not _after_dot_or_at(words, i):
            name = words[i + 1]
            if _IDENT.fullmatch(name):
                types.append(_Type(name, "public" in modifiers))
            modifiers = []
        else:
            modifiers.append(w)
    return package, types


def _after_dot_or_at(words: list[str], i: int) -> bool:
    # `Foo.class` is an expression, `@interface` an annotation type (it has no main).
    return i > 0 and words[i - 1] in (".", "@")


def _dotted(words: list[str], i: int) -> list[str]:
    out: list[str] = []
    while i < len(words) and words[i] != ";":
        out.append(words[i])
        i += 1
    return out


def _top_level_words(text: str) -> list[str]:
    """The words and the punctuation `; } . @` at brace and parenthesis depth 0,
    with comments and literals skipped (a `}` is reported when it closes a
    top-level body, as the end of a declaration).  Inside a body only comments,
    literals and braces are matched (by the regular expression, not a Python
    loop over every word): the scan runs on every compile of a Java program."""
    out: list[str] = []
    depth = parens = 0
    pos = 0
    while True:
        m = (_TOKEN if depth == 0 else _INNER).match(text, pos)
        if m is None or m.end() == pos:
            return out  # (only skippable characters were left)
        pos = m.end()
        tok = m.group(1)
        if tok is None:
            return out
        c = tok[0]
        if c in "/\"'" or (len(tok) == 1 and not (c.isalnum() or c in "_${}();.@")):
            continue  # a comment, a literal or a stray character
        if c == "{":
            depth += 1
        elif c == "}":
            depth = max(depth - 1, 0)
            if depth == 0:
                out.append("}")
        elif c in "()":
            parens = max(parens + (1 if c == "(" else -1), 0)
        elif parens == 0:
            out.append(tok)
