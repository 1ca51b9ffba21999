"""The layout shows the product: no import cycle between packages, and each package's boundaries.

Every ``import`` in the project's packages (including the lazy ones inside functions) is read with
``ast``. A node is a top-level package (``modeling_afmrl``, ``hub_cards``, ``benchmarks``) or a
sub-package of ``afmrl`` / ``trainers`` (``afmrl.data``, ``trainers.agcl``...); the modules directly
inside ``afmrl`` / ``trainers`` form the nodes ``afmrl`` / ``trainers``. ``__main__`` modules are
entry points (``python -m afmrl``): nothing imports them, so they are not part of the graph.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

from tiny_models import REPO

PACKAGES = ("afmrl", "trainers", "modeling_afmrl", "hub_cards", "benchmarks")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _node(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] not in PACKAGES:
        return None
    if (
        parts[0] in ("afmrl", "trainers")
        and len(parts) > 1
        and (REPO / parts[0] / parts[1]).is_dir()
    ):
        return f"{parts[0]}.{parts[1]}"
    return parts[0]


def _imports(path: Path) -> set[str]:
    """Absolute names of every module ``path`` imports (relative imports resolved)."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                name = ".".join([*base, node.module] if node.module else base)
            else:
                name = node.module
            found.add(name)
            found.update(f"{name}.{alias.name}" for alias in node.names)
    return found


def _graph() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = defaultdict(set)
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            if path.name == "__main__.py":
                continue
            source = _node(_module_name(path))
            for name in _imports(path):
                target = _node(name)
                if target is not None and target != source:
                    edges[source].add(target)
    return edges


def _cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_cycle_between_packages():
    edges = _graph()
    assert edges["afmrl.cli"], "the graph should see the CLI's lazy imports"
    assert _cycle(edges) is None, f"import cycle: {' -> '.join(_cycle(edges))}"


def test_the_cycle_check_can_fail():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": {"c"}}) is None


def test_package_boundaries():
    edges = _graph()
    for source, targets in edges.items():
        if source != "benchmarks":
            assert "benchmarks" not in targets, f"{source} imports benchmarks (scripts only)"
    # A checkpoint's remote code needs nothing of the library or the trainers.
    assert not edges.get("modeling_afmrl"), edges.get("modeling_afmrl")
    # Library code never reaches into the trainers, except what runs them: the command line and
    # the main job (which runs each stage as a command and reports on their outputs).
    for source, targets in edges.items():
        if source.startswith("afmrl") and source not in ("afmrl.cli", "afmrl.pipeline"):
            assert not any(t.startswith("trainers") for t in targets), (source, targets)


def test_benchmarks_holds_only_benchmark_scripts():
    names = sorted(p.name for p in (REPO / "benchmarks").rglob("*.py"))
    assert names == ["__init__.py", *sorted(n for n in names if n.startswith("bench_"))]
    assert len(names) > 1
