"""The library's import graph: no circle between modules, and every import between its packages goes
down the layers below. Imports inside functions count (they are how a circle hides); imports under
`if TYPE_CHECKING:` do not (they never run)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "emokp_ray"

# Lowest first. A module may import from its own package (the part after "emokp_ray.") and from any
# package on a LOWER line, never from its own line's other packages or from above.
LAYERS = (
    ("errors",),
    ("labels", "storage", "ray_utils", "local_cluster"),
    ("tasks",),  # the task specs: data every layer above looks up
    ("models", "builtin", "data"),
    ("artifacts",),
    ("training", "inference"),
    ("evaluation", "analyzer"),
    ("__init__",),  # the package's face: FaceAnalyzer (lazily), __version__
    ("serving",),
    ("demo",),
    ("cli",),
)
LAYER = {name: level for level, names in enumerate(LAYERS) for name in names}


def _modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package."""
    modules = {}
    for file in sorted(PACKAGE.rglob("*.py")):
        parts = file.relative_to(PACKAGE.parent).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = file
    return modules


def _is_type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _imported_names(tree: ast.AST) -> list[str]:
    """Every `emokp_ray...` name imported anywhere in `tree` (functions too), TYPE_CHECKING blocks aside."""
    names: list[str] = []

    def visit(node: ast.AST) -> None:
        if _is_type_checking(node):
            return
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from a.b import c`: c may be a module (a.b.c) or a name in a.b; _resolve decides
            names.extend(f"{node.module}.{alias.name}" for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return [name for name in names if name.split(".")[0] == "emokp_ray"]


def import_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports."""
    modules = _modules()

    def resolve(name: str) -> str:
        while name not in modules:
            name = name.rpartition(".")[0]
        return name

    return {
        module: {resolve(name) for name in _imported_names(ast.parse(file.read_text()))} - {module}
        for module, file in modules.items()
    }


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in graph[node]:
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                other = stack.pop()
                component.append(other)
                if other == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return found


def _package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_every_module_has_a_layer():
    assert {_package(module) for module in _modules()} <= set(LAYER)


def test_no_module_imports_itself_back_through_others():
    assert circles(import_graph()) == []


def test_imports_between_packages_only_go_down():
    upward = sorted(
        f"{module} -> {target}"
        for module, targets in import_graph().items()
        for target in targets
        if _package(module) != _package(target) and LAYER[_package(target)] >= LAYER[_package(module)]
    )
    assert upward == []


def test_the_checks_see_a_circle_hidden_in_a_function():
    tree = ast.parse("def f():\n    from emokp_ray.inference.predictor import Predictor\n")
    assert _imported_names(tree) == ["emokp_ray.inference.predictor.Predictor"]
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    hidden = ast.parse("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import emokp_ray.cli\n")
    assert _imported_names(hidden) == []
