"""The import layers of the house, read from the source with `ast` (nothing is imported):

    models < settings < data < recipes < tasks < flows < paperops

A module imports only its own layer and the layers the brief allows below it: models/ and settings/ nothing of the
project, data/ settings, recipes/ models, data and settings, tasks/ those and recipes, flows/ tasks, recipes and
settings, paperops/ anything. models/ imports no config schema (pydantic) and no orchestration package; no layer
below tasks/ imports an orchestration package (data/ may build Great Expectations suites). mlflow/*.py (the
MLflow server side, not a package) and benchmarks/ may import any layer, but mlflow/*.py nothing from paperops.

Every import counts for the layers, also one inside a function or under `if TYPE_CHECKING:`: a lazy import is a
dependency all the same. The cycle check follows every import that can run, module level and inside functions
alike: moving one import of a cycle into a function keeps the modules importable but leaves the two depending on
each other (issue 18's tasks/data <-> tasks/retry was such a pair). Only imports under `if TYPE_CHECKING:` are
left out of it: they never run, and a type annotation pointing back is no dependency of the running code."""
from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

from settings import PROJECT_ROOT

PACKAGES = ("models", "settings", "data", "recipes", "tasks", "flows", "paperops")
ALLOWED = {
    "models": set(),
    "settings": set(),
    "data": {"settings"},
    "recipes": {"models", "data", "settings"},
    "tasks": {"recipes", "models", "data", "settings"},
    "flows": {"tasks", "recipes", "settings"},
    "paperops": set(PACKAGES),
    "mlflow": set(PACKAGES) - {"paperops"},
    "benchmarks": set(PACKAGES),
}
ORCHESTRATION = {"prefect", "mlflow", "dvc", "great_expectations"}
FORBIDDEN_THIRD_PARTY = {
    "models": ORCHESTRATION | {"pydantic"},
    "settings": ORCHESTRATION,
    "data": ORCHESTRATION - {"great_expectations"},
    "recipes": ORCHESTRATION,
}


@dataclass(frozen=True)
class Import:
    target: str        # the imported module's dotted name (a project module when the project has it)
    line: int
    type_only: bool    # under `if TYPE_CHECKING:`: never runs


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> str:
    return module.split(".")[0]


def project_modules(root: Path) -> dict[str, Path]:
    files = [p for package in PACKAGES for p in (root / package).rglob("*.py")]
    files += list((root / "mlflow").glob("*.py")) + list((root / "benchmarks").glob("*.py"))
    return {module_name(p, root): p for p in sorted(files) if "__pycache__" not in p.parts}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports_of(module: str, source: str, modules: set[str], is_package: bool) -> list[Import]:
    """Every import statement of `source`, relative ones resolved; `from a import b` names the module a.b when the
    project has one, else a."""
    found: list[Import] = []
    package = module if is_package else module.rpartition(".")[0]

    def visit(node: ast.AST, type_only: bool) -> None:
        if isinstance(node, ast.Import):
            found.extend(Import(alias.name, node.lineno, type_only) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = dict.fromkeys(f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names)
            found.extend(Import(target, node.lineno, type_only) for target in targets)
        for child in ast.iter_child_nodes(node):
            checking = isinstance(node, ast.If) and _is_type_checking(node.test) and child in node.body
            visit(child, type_only or checking)

    visit(ast.parse(source), False)
    return found


def import_graph(root: Path) -> dict[str, list[Import]]:
    modules = project_modules(root)
    names = set(modules)
    return {name: imports_of(name, path.read_text(), names, path.name == "__init__.py")
            for name, path in modules.items()}


def layering_violations(graph: dict[str, list[Import]]) -> list[str]:
    problems = []
    for module, imports in graph.items():
        layer = layer_of(module)
        for imported in imports:
            top = layer_of(imported.target)
            where = f"{module} (line {imported.line}) imports {imported.target}"
            if top in PACKAGES and top != layer and top not in ALLOWED[layer]:
                problems.append(f"{where}: {layer} may import only {sorted(ALLOWED[layer]) or 'itself'}")
            elif top not in PACKAGES and top in FORBIDDEN_THIRD_PARTY.get(layer, set()):
                problems.append(f"{where}: {layer} must not import {top}")
    return problems


def import_cycles(graph: dict[str, list[Import]]) -> list[list[str]]:
    """The strongly connected components (more than one module, or a module importing itself) of the graph of
    imports that can run (Tarjan's algorithm)."""
    edges = {m: sorted({i.target for i in imports if not i.type_only and i.target in graph})
             for m, imports in graph.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for successor in edges[node]:
            if successor not in index:
                connect(successor)
                low[node] = min(low[node], low[successor])
            elif successor in on_stack:
                low[node] = min(low[node], index[successor])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1 or node in edges[node]:
                cycles.append(sorted(component))

    for node in edges:
        if node not in index:
            connect(node)
    return cycles


def write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def test_the_checks_see_what_they_must(tmp_path):
    root = write(tmp_path, {
        "models/__init__.py": "",
        "models/net.py": "import torch\nfrom pydantic import Field, model_validator\n\ndef f():\n"
                         "    from recipes.base import X\n",
        "recipes/__init__.py": "from .base import X\n",
        "recipes/base.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from recipes import X\n"
                           "from models import net\n",
        "tasks/__init__.py": "",
        "tasks/a.py": "from tasks import b\n",
        "tasks/b.py": "import prefect\n\ndef f():\n    import tasks.a\n",
        "settings/__init__.py": "import mlflow\n",
        "mlflow/paper_model.py": "import mlflow\nfrom recipes import X\nfrom paperops import cli\n",
    })
    graph = import_graph(root)
    assert [i.target for i in graph["recipes"]] == ["recipes.base"]     # relative import resolved
    assert [(i.target, i.type_only) for i in graph["recipes.base"]] == [("typing", False), ("recipes", True),
                                                                      ("models.net", False)]
    assert sorted(layering_violations(graph)) == [
        "mlflow.paper_model (line 3) imports paperops: mlflow may import only "
        "['data', 'flows', 'models', 'recipes', 'settings', 'tasks']",
        "models.net (line 2) imports pydantic: models must not import pydantic",
        "models.net (line 5) imports recipes.base: models may import only itself",   # inside a function too
        "settings (line 1) imports mlflow: settings must not import mlflow",
    ]
    # tasks.a <-> tasks.b and models.net <-> recipes.base import each other (one side in a function);
    # recipes <-> recipes.base only for typing
    assert sorted(import_cycles(graph)) == [["models.net", "recipes.base"], ["tasks.a", "tasks.b"]]


@pytest.fixture(scope="module")
def project_graph() -> dict[str, list[Import]]:
    return import_graph(PROJECT_ROOT)


def test_every_layer_imports_only_the_layers_below_it(project_graph):
    assert {"models.common.vit", "recipes.base", "tasks.register", "flows.pipeline", "paperops.cli",
            "mlflow.paper_model"} <= project_graph.keys()
    problems = layering_violations(project_graph)
    assert not problems, "\n".join(problems)


def test_no_import_cycle_between_project_modules(project_graph):
    cycles = import_cycles(project_graph)
    assert not cycles, "\n".join(" <-> ".join(cycle) for cycle in cycles)
