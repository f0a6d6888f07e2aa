"""Languages as data (sandboxd/languages.py): loading, checks of the files, and
the per-run arithmetic.  (Each language running on a real box:
tests/engine/test_languages.py.)"""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from sandboxd.languages import Language, load_dir
from sandboxd.schema import Limits, MiB, SchemaError

LANGS = load_dir()
DATA = (
    Path(__file__).parent.parent / "engine" / "languages"
)  # tests/engine/languages: the programs tests/engine/test_languages.py runs
PROGRAMS = {p.stem: tomllib.loads(p.read_text()) for p in DATA.glob("*.toml")}


def test_every_language_has_test_programs() -> None:
    assert set(PROGRAMS) == set(LANGS)
    for lid, progs in PROGRAMS.items():
        want = {"aplusb", "tle", "mle", "exit3", "crash"} | ({"ce", "ce_message"} if LANGS[lid].compile else set())
        assert want <= set(progs), f"{lid}: missing {want - set(progs)}"


def test_every_packaged_language_can_be_self_tested() -> None:
    assert {"c", "cpp", "python3", "java"} <= set(LANGS)
    for lid, lang in LANGS.items():
        assert lang.id == lid and lang.selftest.strip() and lang.run, lid
        # (a language whose entry file is named from its content compiles the file the environment names)
        used = "$SANDBOXD_SOURCE" if lang.entry_class else lang.source
        assert used in " ".join(lang.compile or lang.run), f"{lid}: the source file is not used"


def lang(**kw: object) -> Language:
    return Language(**{"id": "t", "name": "T", "source": "main.t", "run": ["t", "main.t"], **kw})  # type: ignore[arg-type]


def test_run_argv_sizes_the_heap_to_the_memory_limit() -> None:
    jvm = lang(run=["java", "-Xmx{heap_mb}m", "-Dmem={memory_mb}", "Main"], heap_fraction=0.5)
    assert jvm.run_argv(256 * MiB) == ["java", "-Xmx128m", "-Dmem=256", "Main"]
    assert jvm.run_argv(20 * MiB)[1] == "-Xmx16m"  # a floor: a runtime does not start with less


def test_fit_refuses_above_the_maximum_and_raises_the_runtimes_floors() -> None:
    t = lang(min_procs=32, min_open_files=512)
    with pytest.raises(SchemaError, match=r"limits\.cpu_time: 31.0 is more than 30.0, the maximum for t"):
        t.fit(Limits(cpu_time=31.0))
    with pytest.raises(SchemaError, match=r"limits\.memory"):
        t.fit(Limits(memory=4096 * MiB))
    got = t.fit(Limits(procs=4, open_files=64))
    assert (got.procs, got.open_files) == (32, 512)
    big = Limits(procs=100, open_files=1000)
    assert t.fit(big) is big  # nothing to raise: the same limits


def test_memory_errors_are_matched_in_the_end_of_stderr() -> None:
    py = lang(memory_errors=["(?m)^MemoryError"])
    assert py.memory_error(b"Traceback ...\nMemoryError\n")
    assert not py.memory_error(b"raise MemoryError\n")  # not at a line start
    assert py.memory_error(b"x" * (1 << 20) + b"\nMemoryError")
    assert not py.memory_error(b"\nMemoryError" + b"x" * 65536)  # only the last 64 KiB are read


@pytest.mark.parametrize(
    ("name", "text", "why"),
    [
        ("t.toml", 'id = "t"\nname =', "t.toml"),
        ("t.toml", 'id = "t"\nname = "T"\nsource = "m"\nrun = ["m"]\nbogus = 1', "bogus"),
        ("t.toml", 'id = "T!"\nname = "T"\nsource = "m"\nrun = ["m"]', "id"),
        ("u.toml", 'id = "t"\nname = "T"\nsource = "m"\nrun = ["m"]', "must match the file name"),
        ("t.toml", 'id = "t"\nname = "T"\nsource = "m"\nrun = ["m"]\nmemory_errors = ["("]', "t.toml"),
    ],
)
def test_a_bad_language_file_is_refused_naming_it(tmp_path: Path, name: str, text: str, why: str) -> None:
    (tmp_path / name).write_text(text)
    with pytest.raises(ValueError, match=why):
        load_dir(tmp_path)


def test_a_languages_dir_replaces_the_packaged_one(tmp_path: Path) -> None:
    (tmp_path / "t.toml").write_text('id = "t"\nname = "T"\nsource = "m"\nrun = ["m"]\n')
    (tmp_path / "README.md").write_text("not a language")
    assert list(load_dir(tmp_path)) == ["t"]
