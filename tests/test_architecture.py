"""The layering rules of the code, checked on the source: imports one way, no cycles, small files.

scripts (``benchmark/run.py``, ``benchmark/aggregate.py``) → ``sweep/`` → ``train/`` → ``store/``;
``methods/``, ``models/``, ``data/``, ``suites/``, ``detection/``, ``report/`` are leaves. Function-level
imports count like module-level ones: a cycle held open by a late import is still a cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("benchmark", "methods")
SCRIPTS = {"benchmark.run", "benchmark.aggregate"}
MAX_LINES = 600


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


def imported(path: Path, name: str, known: set[str]) -> set[str]:
    """The modules of ``known`` that ``path`` imports anywhere in its body (``from X import y`` may name a module)."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    # Imports under ``if TYPE_CHECKING:`` never run (type hints only): they are not part of the graph.
    typing_only = {
        id(inner)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and getattr(node.test, "id", getattr(node.test, "attr", None)) == "TYPE_CHECKING"
        for stmt in node.body
        for inner in ast.walk(stmt)
    }
    targets = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            targets.add(module)
            targets.update(f"{module}.{alias.name}" for alias in node.names)
    out = set()
    for target in targets:
        while target and target not in known:
            target = target.rpartition(".")[0]
        if target and target != name:
            out.add(target)
    return out


def graph() -> dict[str, set[str]]:
    found = modules()
    return {name: imported(path, name, set(found)) for name, path in found.items()}


def without_packages(edges: dict[str, set[str]]) -> dict[str, set[str]]:
    """Drop the edges into package ``__init__`` modules that only re-export (a package is not a layer)."""
    packages = {name for name, path in modules().items() if path.name == "__init__.py"}
    return {name: {t for t in targets if t not in packages} for name, targets in edges.items()}


def test_no_import_cycle():
    edges = without_packages(graph())
    index, low, stack, on_stack, cycles, counter = {}, {}, [], set(), [], [0]

    def visit(node: str) -> None:  # Tarjan's strongly connected components
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for other in sorted(edges.get(node, ())):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    assert cycles == [], cycles


@pytest.mark.parametrize(
    "layer, forbidden",
    [
        ("benchmark.store", ("benchmark.train", "benchmark.sweep", "benchmark.report", "benchmark.suites")),
        ("benchmark.train", ("benchmark.sweep",)),
        ("benchmark.report", ("benchmark.train", "benchmark.sweep")),
        ("methods", ("benchmark",)),
        ("benchmark.suites", ("benchmark.train", "benchmark.sweep", "benchmark.report")),
    ],
)
def test_imports_go_one_way(layer, forbidden):
    bad = [
        (name, target)
        for name, targets in graph().items()
        if name == layer or name.startswith(layer + ".")
        for target in targets
        if target.startswith(forbidden)
    ]
    assert bad == []


def test_nothing_imports_a_script():
    bad = [(name, target) for name, targets in graph().items() for target in targets & SCRIPTS]
    assert bad == []


def test_only_sweep_cluster_imports_submitit_and_only_scripts_and_options_parse_argv():
    for name, path in modules().items():
        text = path.read_text()
        tree = ast.parse(text)
        names = {
            alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names
        }
        names |= {(node.module or "").split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
        if "submitit" in names:
            assert name.startswith("benchmark.sweep.cluster"), name
        if "argparse" in names:
            # Scripts: the two CLIs, the benchmark and install tools run with ``python -m``; the sweep's one parser.
            assert name in SCRIPTS | {"benchmark.sweep.options"} or name.startswith(
                ("benchmark.bench.", "benchmark.tools.")
            ), name


def test_no_file_over_the_limit():
    long = {name: n for name, path in modules().items() if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert long == {}


def test_no_getattr_on_a_suite_and_the_record_file_named_once():
    for name, path in modules().items():
        text = path.read_text()
        assert "getattr(suite" not in text and "getattr(spec.suite" not in text and "getattr(self.suite" not in text, (
            name
        )
        assert "hasattr(suite" not in text and "hasattr(spec.suite" not in text, name
        if name != "benchmark.store.records":
            assert '"record.json"' not in text and "'record.json'" not in text, name


def test_the_checker_sees_a_cycle(tmp_path):
    """The cycle test can fail: two modules that import each other inside functions are found."""
    edges = {"a": {"b"}, "b": {"a"}}
    a, b = tmp_path / "a.py", tmp_path / "b.py"
    a.write_text("def f():\n    from b import g\n")
    b.write_text("def g():\n    import a\n")
    assert imported(a, "a", set(edges)) == {"b"} and imported(b, "b", set(edges)) == {"a"}
    c = tmp_path / "c.py"
    c.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import a\n")
    assert imported(c, "c", {"a", "c"}) == set()  # type hints only
