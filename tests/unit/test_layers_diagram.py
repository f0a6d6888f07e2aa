"""docs/layers.md is what scripts/layers_diagram.py draws from today's code,
and that script reads imports the way Python runs them."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]


def _script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("layers_diagram", ROOT / "scripts" / "layers_diagram.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up while the class is made
    spec.loader.exec_module(mod)
    return mod


diagram = _script()


def test_docs_layers_md_is_up_to_date() -> None:
    current = (ROOT / "docs" / "layers.md").read_text()
    assert current == diagram.render(), "docs/layers.md is out of date: run python scripts/layers_diagram.py"


def test_every_module_is_in_a_known_layer() -> None:
    modules, _ = diagram.collect()
    assert set(modules) <= set(diagram.LAYERS), "new in sandboxd/: place it in the layers contract"
    assert "sandboxd.schema" in modules["shared"] and "sandboxd.sandbox.box" in modules["sandbox"]
    assert "sandboxd.__main__" in modules["app"]


def test_imports_are_sorted_by_when_they_run(tmp_path: Path) -> None:
    src = """
from typing import TYPE_CHECKING
import sandboxd.engine.pool
from sandboxd import schema, rates as r
from sandboxd.sandbox import box
if TYPE_CHECKING:
    from sandboxd.jobs.service import Service
class C:
    def f(self) -> None:
        from sandboxd.app import daemon
        if TYPE_CHECKING:
            import sandboxd.fleet
"""
    v = diagram._Imports("sandboxd.api.x", is_package=False)
    v.visit(diagram.ast.parse(src))
    assert sorted(v.found) == [
        ("sandboxd.app.daemon", "lazy"),
        ("sandboxd.engine.pool", "load"),
        ("sandboxd.fleet", "typing"),
        ("sandboxd.jobs.service", "typing"),
        ("sandboxd.rates", "load"),
        ("sandboxd.sandbox.box", "load"),
        ("sandboxd.schema", "load"),
        ("typing", "load"),
    ]


def test_relative_imports_resolve_from_the_modules_package() -> None:
    # As in sandboxd/compat/judge0/__init__.py: "." is that package, "..." sandboxd.
    v = diagram._Imports("sandboxd.compat.judge0", is_package=True)
    v.visit(diagram.ast.parse("from . import VERSION\nfrom ... import schema\nfrom ...engine import pool\n"))
    assert sorted(v.found) == [
        ("sandboxd.compat.judge0", "load"),  # a name, not a module: the package is what is imported
        ("sandboxd.engine.pool", "load"),
        ("sandboxd.schema", "load"),
    ]
    v = diagram._Imports("sandboxd.jobs.table", is_package=False)
    v.visit(diagram.ast.parse("from .store import JobStore\nfrom ..rates import retry_after\n"))
    assert sorted(v.found) == [("sandboxd.jobs.store", "load"), ("sandboxd.rates", "load")]


def test_the_order_is_import_linters_when_it_has_a_layers_contract() -> None:
    # The shape of pyproject.toml's [tool.importlinter] (highest layer first, siblings joined by ":" or "|").
    entries = ["sandboxd.__main__", "sandboxd.app", "sandboxd.fleet", "sandboxd.compat", "sandboxd.api"]
    entries += ["sandboxd.jobs", "sandboxd.judging", "sandboxd.engine", "sandboxd.sandbox", "sandboxd.rootfs"]
    entries += ["sandboxd.config : sandboxd.errors | sandboxd.schema"]
    contracts = [{"type": "forbidden"}, {"type": "layers", "layers": entries}]
    pyproject = {"tool": {"importlinter": {"contracts": contracts}}}
    got = diagram.contract_layers(pyproject)
    assert got is not None and got[0] == diagram.DEFAULT_LAYERS
    assert got[1]["sandboxd.config"] == "shared" and got[1]["sandboxd.__main__"] == "app"
    assert diagram.contract_layers({"tool": {}}) is None


def test_upward_imports_are_red_unless_for_annotations_only() -> None:
    assert diagram._against("jobs", "compat", {"load"}) and diagram._against("fleet", "app", {"lazy"})
    assert not diagram._against("jobs", "compat", {"typing"})  # as import-linter: not a dependency
    assert not diagram._against("compat", "jobs", {"load"})
