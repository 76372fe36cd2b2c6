"""The package's import graph, imports inside functions included: no cycles, and every dependency points down
the layers (data -> models -> engine / inference -> evaluation / export -> serve / cli).

Only the source is parsed (``ast``): nothing is imported, so this runs in well under a second.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

PACKAGE = "u2net"
PACKAGE_DIR = Path(__file__).resolve().parent.parent / PACKAGE

# Layer of each top-level module or subpackage of u2net: a module imports only from layers <= its own.
LAYERS = {
    "errors": 0,  # one-line error messages; imports nothing of ours
    "fileio": 0,  # atomic file writes; imports nothing of ours
    "lazy": 0,  # the packages' lazy attributes (PEP 562); imports nothing of ours
    "data": 0,
    "metrics": 0,  # scoring; imports nothing of ours
    "models": 1,  # architectures, weights, the pretrained catalogue, ONNX import
    "losses": 1,
    "device": 1,  # where PyTorch runs and at what precision (shared by engine and inference); imports torch only
    "engine": 2,  # training
    "inference": 2,  # prediction, background removal, ONNX Runtime sessions, timing
    "tasks": 2,  # the entry scripts' shared error handling (task_wrapper); reads engine's and models' errors
    "evaluation": 3,
    "export": 3,
    "serve": 4,
    "cli": 4,
}
# u2net/__init__.py sits at the models layer, not on top: Python runs it before any u2net submodule, so what it
# imports every module imports. It re-exports the model API (create_model, load_model, ...) and defines
# __version__, which export, serve and cli read.
ROOT_LAYER = 1


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(path): path for path in sorted(PACKAGE_DIR.rglob("*.py"))}


def _imported(node: ast.Import | ast.ImportFrom, module: str, is_package: bool, known: set[str]) -> Iterator[str]:
    """The u2net modules an import statement names: ``from x import y`` names ``x.y`` when that is a module."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        if node.level:
            parts = module.split(".") if is_package else module.split(".")[:-1]
            parts = parts[: len(parts) - node.level + 1]
            base = ".".join(parts + ([node.module] if node.module else []))
        else:
            base = node.module or ""
        names = [base] + [f"{base}.{alias.name}" for alias in node.names]
    for name in names:
        while name and name not in known:  # ``import u2net.a.b`` of an attribute: its module
            name = name.rpartition(".")[0]
        if name:
            yield name


def _ancestors(module: str) -> list[str]:
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def import_graph() -> dict[str, dict[str, int]]:
    """module -> {imported module: line}, for every import of a u2net module anywhere in a u2net module.

    Importing ``u2net.models.pretrained`` also runs ``u2net/models/__init__.py``: such parent packages are edges
    too, except the importer's own (they ran before it).
    """
    modules = _modules()
    known = set(modules)
    graph: dict[str, dict[str, int]] = {}
    for module, path in modules.items():
        edges: dict[str, int] = {}
        own = set(_ancestors(module))
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            for target in _imported(node, module, path.name == "__init__.py", known):
                for name in [*_ancestors(target), target]:
                    if name != module and name not in own:
                        edges.setdefault(name, node.lineno)
        graph[module] = edges
    return graph


def find_cycle(graph: dict[str, dict[str, int]]) -> list[str] | None:
    """One import cycle as ``[a, b, ..., a]``, or ``None``."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = 1
        path.append(module)
        for target in sorted(graph.get(module, {})):
            if state.get(target) == 1:
                return path[path.index(target) :] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[module] = 2
        return None

    for module in sorted(graph):
        if module not in state and (cycle := visit(module)):
            return cycle
    return None


def layer_of(module: str) -> int:
    if module == PACKAGE:
        return ROOT_LAYER
    top = module.split(".")[1]
    assert top in LAYERS, f"{module}: no layer assigned to u2net.{top} (add it to LAYERS)"
    return LAYERS[top]


def layer_violations(graph: dict[str, dict[str, int]]) -> dict[tuple[str, str], int]:
    """(importer, imported) -> line, for every import of a higher layer."""
    return {
        (module, target): line
        for module, edges in graph.items()
        for target, line in edges.items()
        if layer_of(target) > layer_of(module)
    }


def _describe(graph: dict[str, dict[str, int]], cycle: list[str]) -> str:
    steps = [f"{a} -> {b} (line {graph[a][b]})" for a, b in zip(cycle, cycle[1:])]
    # An import of a.b.c runs a/b/__init__.py too: such a step may name a package the line does not.
    return "import cycle (importing a.b.c runs package a.b's __init__ first):\n  " + "\n  ".join(steps)


def test_every_module_has_a_layer() -> None:
    for module in _modules():
        layer_of(module)


def test_no_import_cycle() -> None:
    graph = import_graph()
    cycle = find_cycle(graph)
    assert cycle is None, _describe(graph, cycle)


def test_dependencies_point_down_the_layers() -> None:
    found = layer_violations(import_graph())
    lines = sorted(
        f"{a} (layer {layer_of(a)}, line {line}) imports {b} (layer {layer_of(b)})" for (a, b), line in found.items()
    )
    assert not lines, "imports against the layer order:\n  " + "\n  ".join(lines)


def test_checker_finds_cycles_and_layer_breaks() -> None:
    graph = {"u2net.models.a": {"u2net.export.b": 3}, "u2net.export.b": {"u2net.models.a": 7}}
    assert find_cycle(graph) == ["u2net.export.b", "u2net.models.a", "u2net.export.b"]
    assert layer_violations(graph) == {("u2net.models.a", "u2net.export.b"): 3}
    assert find_cycle({"u2net.models.a": {"u2net.fileio": 1}, "u2net.fileio": {}}) is None
