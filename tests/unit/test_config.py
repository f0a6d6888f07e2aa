"""Reading the configuration (sandboxd/config.py): only its stable surface,
a file loaded and bad input refused naming what is wrong.  (The sections,
defaults and deprecations have tests of their own: tests/test_config*.py.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from sandboxd import config

NOWHERE = Path("/nonexistent/sandboxd.toml")  # as default_path: no file where it would be looked for


def test_a_file_is_read(tmp_path: Path) -> None:
    p = tmp_path / "sandboxd.toml"
    p.write_text('instance = "judges"\n')
    assert config.load(p, env={}).instance == "judges"


def test_no_file_at_the_default_path_is_the_defaults() -> None:
    assert config.load(None, env={}, default_path=NOWHERE).instance == "default"


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("instanse = 'x'\n", "instanse"),  # a typo is not ignored
        ("instance = \n", "sandboxd.toml"),  # malformed TOML: the file is named
        ("instance = 3\n", "instance"),  # a wrong type names the key
    ],
)
def test_bad_files_are_refused_naming_the_problem(tmp_path: Path, text: str, why: str) -> None:
    p = tmp_path / "sandboxd.toml"
    p.write_text(text)
    with pytest.raises(config.ConfigError, match=why):
        config.load(p, env={})


def test_a_file_asked_for_must_exist(tmp_path: Path) -> None:
    with pytest.raises(config.ConfigError, match="no such file"):
        config.load(tmp_path / "missing.toml", env={})


def test_an_unknown_sandboxd_variable_is_refused() -> None:
    with pytest.raises(config.ConfigError, match="SANDBOXD_POOL_SIZ"):
        config.load(None, env={"SANDBOXD_POOL_SIZ": "4"}, default_path=NOWHERE)
