"""The package's import graph, read with `ast` (imports inside functions included): no cycles,
and the layering the architecture states."""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx
import pytest

SRC = Path(__file__).resolve().parents[1] / "src"


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> nx.DiGraph:
    """Edges module -> axflow module it imports, anywhere in its body."""
    modules = {_module_name(p): p for p in SRC.rglob("*.py")}
    graph = nx.DiGraph()
    graph.add_nodes_from(modules)
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                # `from pkg import mod` names a submodule when one exists
                targets = [
                    f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base
                    for a in node.names
                ]
            else:
                continue
            for target in targets:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                # Python runs a module's parent packages first; the importer's own are running.
                parts = target.split(".")
                for chain in (".".join(parts[:i]) for i in range(2, len(parts) + 1)):
                    if chain in modules and chain != name and not name.startswith(chain + "."):
                        graph.add_edge(name, chain)
    return graph


def _package_edges(graph: nx.DiGraph) -> nx.DiGraph:
    """Module edges collapsed to packages (axflow.data.x -> axflow.data); a package's
    `__init__` belongs to it."""

    def pkg(m: str) -> str:
        parts = m.split(".")
        return ".".join(parts[:2])

    out = nx.DiGraph()
    for a, b in graph.edges:
        if pkg(a) != pkg(b):
            out.add_edge(pkg(a), pkg(b))
    return out


def test_no_import_cycles():
    graph = import_graph()
    cycles = [sorted(c) for c in nx.strongly_connected_components(graph) if len(c) > 1]
    assert not cycles, f"module import cycles: {cycles}"
    packages = _package_edges(graph)
    pcycles = [sorted(c) for c in nx.strongly_connected_components(packages) if len(c) > 1]
    assert not pcycles, f"package import cycles: {pcycles}"


@pytest.mark.parametrize(
    "importer, forbidden",
    [
        ("axflow.data", "axflow.judge"),
        ("axflow.report", "axflow.stages"),
        ("axflow.metrics", "axflow.lm"),
    ],
)
def test_layering(importer, forbidden):
    bad = [
        (a, b)
        for a, b in import_graph().edges
        if (a == importer or a.startswith(importer + "."))
        and (b == forbidden or b.startswith(forbidden + "."))
    ]
    assert not bad, f"{importer} must not import {forbidden}: {bad}"


def test_modules_stay_small():
    big = {
        str(p.relative_to(SRC)): n
        for p in SRC.rglob("*.py")
        if (n := len(p.read_text().splitlines())) > 400
    }
    assert not big, f"modules over 400 lines: {big}"
