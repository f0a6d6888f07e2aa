#!/usr/bin/env python3
"""Draw sandboxd's layers from the code: docs/layers.md, a Mermaid graph of
which layer package imports which.

    python scripts/layers_diagram.py          # rewrite docs/layers.md
    python scripts/layers_diagram.py --check  # exit 1 if it is out of date

It reads sandboxd/ with `ast` (nothing is imported, so it runs anywhere) and
sorts every import by where it runs: at module load, only inside a function
(lazy), or only for the type checker (`if TYPE_CHECKING:`).  Edges that go
against the layer order are drawn red and listed with the importing module.
tests/unit/test_layers_diagram.py fails when docs/layers.md differs from what this
prints, so the picture cannot drift from the code.  (The order itself is
enforced by import-linter's contracts; this only shows it.)
"""

from __future__ import annotations

import argparse
import ast
import re
import sys
import tomllib
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "sandboxd"
OUTPUT = ROOT / "docs" / "layers.md"

# Lowest first: each layer may import only the layers before it
# (docs/architecture.md).  "shared" is what sits directly in sandboxd/.
# The layers are import-linter's `layers` contract in pyproject.toml when
# there is one (it is what CI enforces); these until there is.
DEFAULT_LAYERS = ("shared", "rootfs", "sandbox", "engine", "judging", "jobs", "api", "compat", "fleet", "app")
# Modules directly in sandboxd/ drawn in another layer than "shared".
TOP_LEVEL_LAYER = {"__main__": "app"}  # `python -m sandboxd`: the CLI's entry point

LOAD, LAZY, TYPING = "load", "lazy", "typing"


@dataclass
class Edge:
    kinds: set[str] = field(default_factory=set)
    # (importing module, imported module, kind) behind the edge
    imports: set[tuple[str, str, str]] = field(default_factory=set)


Layers = tuple[tuple[str, ...], dict[str, str]]  # (names lowest first, module prefix -> layer)


def contract_layers(pyproject: dict[str, Any]) -> Layers | None:
    """The layers of import-linter's `layers` contract: each entry is a layer
    (the lowest, of modules directly in sandboxd/, is "shared"); siblings in
    one entry are joined by ":" or "|"."""
    contracts = pyproject.get("tool", {}).get("importlinter", {}).get("contracts", [])
    entries = next((c["layers"] for c in contracts if c.get("type") == "layers"), None)
    if entries is None:
        return None
    names: list[str] = []
    prefixes: dict[str, str] = {}
    for i, entry in enumerate(reversed(entries)):  # import-linter lists the highest first
        mods = [m.strip() for m in re.split(r"[|:]", entry)]
        name = "shared" if i == 0 and len(mods) > 1 else "+".join(m.removeprefix("sandboxd.") for m in mods)
        name = TOP_LEVEL_LAYER.get(name, name)
        prefixes |= dict.fromkeys(mods, name)
        names += [name] if name not in names else []
    return tuple(names), prefixes


def default_layers() -> Layers:
    """DEFAULT_LAYERS' folders; whatever else sits directly in sandboxd/ is shared."""
    prefixes = {f"sandboxd.{name}": name for name in DEFAULT_LAYERS if name != "shared"}
    for p in PACKAGE.iterdir():
        if (p.suffix == ".py" or (p / "__init__.py").is_file()) and f"sandboxd.{p.stem}" not in prefixes:
            prefixes[f"sandboxd.{p.stem}"] = TOP_LEVEL_LAYER.get(p.stem, "shared")
    return DEFAULT_LAYERS, prefixes


def _layers() -> Layers:
    return contract_layers(tomllib.loads((ROOT / "pyproject.toml").read_text())) or default_layers()


LAYERS, PREFIXES = _layers()


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> str | None:
    """The layer of a sandboxd module (None outside sandboxd); one no layer
    names is its folder's or module's own name, drawn after the others."""
    parts = module.split(".")
    if parts[0] != "sandboxd":
        return None
    for n in range(len(parts), 1, -1):
        hit = PREFIXES.get(".".join(parts[:n]))
        if hit is not None:
            return hit
    return "shared" if len(parts) == 1 else parts[1]


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


class _Imports(ast.NodeVisitor):
    """(imported module, kind) of every import statement of one module."""

    def __init__(self, module: str, is_package: bool) -> None:
        self.package = module if is_package else module.rpartition(".")[0]
        self.found: list[tuple[str, str]] = []
        self.kind = LOAD

    def _within(self, kind: str, nodes: list[ast.stmt]) -> None:
        # Nested, the rarer wins: a TYPE_CHECKING import never runs, wherever it is.
        outer, self.kind = self.kind, max(self.kind, kind, key=(LOAD, LAZY, TYPING).index)
        for n in nodes:
            self.visit(n)
        self.kind = outer

    def generic_visit(self, node: ast.AST) -> None:
        # Imports are statements: skip expressions, most of a module's nodes.
        for _, value in ast.iter_fields(node):
            for child in value if isinstance(value, list) else [value]:
                if isinstance(child, ast.stmt | ast.excepthandler | ast.match_case):
                    self.visit(child)

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        self._within(LAZY, node.body)

    def visit_AsyncFunctionDef(self, node: ast.AsyncFunctionDef) -> None:
        self._within(LAZY, node.body)

    def visit_If(self, node: ast.If) -> None:
        if _is_type_checking(node.test):
            self._within(TYPING, node.body)
            self._within(self.kind, node.orelse)
        else:
            self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        self.found += [(a.name, self.kind) for a in node.names]

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        base = node.module or ""
        if node.level:  # relative: from the module's own package upwards
            pkg = self.package.split(".")[: len(self.package.split(".")) - node.level + 1]
            base = ".".join([*pkg, base] if base else pkg)
        for a in node.names:
            # `from sandboxd import config` imports the module sandboxd.config.
            sub = f"{base}.{a.name}"
            self.found.append((sub if _is_module(sub) else base, self.kind))


def _is_module(name: str) -> bool:
    parts = name.split(".")
    if parts[0] != "sandboxd":
        return False
    path = ROOT.joinpath(*parts)
    return path.is_dir() or path.with_suffix(".py").is_file()


def collect() -> tuple[dict[str, list[str]], dict[tuple[str, str], Edge]]:
    """Each layer's modules, and the layer -> layer edges."""
    modules: dict[str, list[str]] = defaultdict(list)
    edges: dict[tuple[str, str], Edge] = defaultdict(Edge)
    for path in sorted(PACKAGE.rglob("*.py")):
        name = module_name(path)
        src = layer_of(name)
        assert src is not None
        modules[src].append(name)
        visitor = _Imports(name, path.name == "__init__.py")
        visitor.visit(ast.parse(path.read_text(), str(path)))
        for target, kind in visitor.found:
            dst = layer_of(target)
            if dst is None or dst == src:
                continue
            edge = edges[(src, dst)]
            edge.kinds.add(kind)
            edge.imports.add((name, target, kind))
    return modules, edges


def _rank(layer: str) -> int:
    return LAYERS.index(layer) if layer in LAYERS else len(LAYERS)


def _label(layer: str, mods: list[str]) -> str:
    """The folder and what lives in it: modules and sub-packages directly there."""
    package = "sandboxd" if layer == "shared" else f"sandboxd.{layer}"
    names = set()
    for m in mods:
        if m == package:
            continue
        if not m.startswith(package + "."):  # placed by TOP_LEVEL_LAYER
            names.add(m.replace(".", "/") + ".py")
            continue
        rel = m.removeprefix(package + ".").split(".")
        sub = len(rel) > 1 or PACKAGE.joinpath(*m.split(".")[1:]).is_dir()
        names.add(rel[0] + ("/" if sub else ""))
    title = "shared: directly in sandboxd/" if layer == "shared" else f"{layer}/"
    return f"{title}<br/>{', '.join(sorted(names)) or '(empty)'}"


def _against(src: str, dst: str, kinds: set[str]) -> bool:
    """Upward, and not for annotations only (import-linter's exclude_type_checking_imports)."""
    return _rank(dst) > _rank(src) and bool(kinds - {TYPING})


def render() -> str:
    modules, edges = collect()
    layers = sorted(modules, key=_rank)
    out = [
        "# The layers, as the code imports them",
        "",
        "Generated by `scripts/layers_diagram.py` from the imports in `sandboxd/`: do not edit;",
        "run `python scripts/layers_diagram.py` after changing imports (tests/unit/test_layers_diagram.py",
        "fails while this file is out of date).  The rules behind it: [architecture.md](architecture.md).",
        "",
        'An arrow is "imports". Solid: at module load; dashed: only inside a function (lazy) or',
        "only for the type checker (an annotation, not a dependency: never red); red: against the",
        f"layer order ({' → '.join(LAYERS)}, each importing only layers before it).",
        "",
        "```mermaid",
        "flowchart TD",
    ]
    out += [f'    {layer}["{_label(layer, modules[layer])}"]' for layer in reversed(layers)]
    order = sorted(edges, key=lambda e: (-_rank(e[0]), -_rank(e[1])))
    upward: list[int] = []
    for i, (src, dst) in enumerate(order):
        kinds = edges[(src, dst)].kinds
        arrow = "-->" if LOAD in kinds else f"-.->|{' + '.join(sorted(kinds))}|"
        out.append(f"    {src} {arrow} {dst}")
        if _against(src, dst, kinds):
            upward.append(i)
    if upward:
        out.append(f"    linkStyle {','.join(map(str, upward))} stroke:#d00,stroke-width:2px")
    out += ["```", ""]
    out += _upward_table(order, edges)
    return "\n".join(out)


def _upward_table(order: list[tuple[str, str]], edges: dict[tuple[str, str], Edge]) -> list[str]:
    rows = [
        f"| {src} → {dst} | `{imp}` | `{target}` | {kind} |"
        for src, dst in order
        for imp, target, kind in sorted(edges[(src, dst)].imports)
        if _against(src, dst, {kind})
    ]
    if not rows:
        return ["No import goes against the layer order.", ""]
    head = ["## Imports against the layer order", "", "| edge | module | imports | when |", "|---|---|---|---|"]
    return [*head, *rows, ""]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--check", action="store_true", help="exit 1 if docs/layers.md is out of date")
    args = p.parse_args(argv)
    text = render()
    if args.check:
        current = OUTPUT.read_text() if OUTPUT.exists() else ""
        if current != text:
            print(f"{OUTPUT.relative_to(ROOT)} is out of date: run python scripts/layers_diagram.py", file=sys.stderr)
            return 1
        return 0
    OUTPUT.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
