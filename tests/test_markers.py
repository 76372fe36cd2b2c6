"""The ``subprocess`` marker cannot drift: every test that starts a Python subprocess carries it.

A test "starts a subprocess" when its body, a fixture it takes or a helper it calls (transitively: in its module,
in ``conftest.py`` or in a ``helpers_*.py`` module it imports from) uses ``subprocess.*`` or ``sys.executable``, runs
a notebook kernel (``NotebookClient``) or a serve matting child (``Matting()`` / ``matting.call``).
``pytest -m "not slow and not subprocess"`` is the fast loop.
"""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).parent
_SPAWNING_CLASSES = {"Matting", "NotebookClient"}


def _spawns_directly(node: ast.AST) -> bool:
    for sub in ast.walk(node):
        if isinstance(sub, ast.Attribute) and isinstance(sub.value, ast.Name):
            if sub.value.id == "subprocess":
                return True
            if (sub.value.id, sub.attr) in {("sys", "executable"), ("matting", "call")}:
                return True
        if isinstance(sub, ast.Attribute) and sub.attr == "NotebookClient":
            return True
        if isinstance(sub, ast.Call) and isinstance(sub.func, ast.Name) and sub.func.id in _SPAWNING_CLASSES:
            return True
    return False


def _is_subprocess_mark(node: ast.AST) -> bool:
    return any(
        isinstance(sub, ast.Attribute)
        and sub.attr == "subprocess"
        and isinstance(sub.value, ast.Attribute)
        and sub.value.attr == "mark"
        for sub in ast.walk(node)
    )


def _targets(stmt: ast.Assign | ast.AnnAssign) -> list[ast.expr]:
    return stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]


def _uses(fn: ast.FunctionDef) -> set[str]:
    names = {n.id for n in ast.walk(fn) if isinstance(n, ast.Name)}
    return names | {a.arg for a in fn.args.args + fn.args.kwonlyargs}


def _functions(tree: ast.Module) -> dict[str, ast.FunctionDef | ast.AsyncFunctionDef]:
    return {s.name: s for s in tree.body if isinstance(s, ast.FunctionDef | ast.AsyncFunctionDef)}


def unmarked_spawning_tests(path: Path) -> list[str]:
    """Names of the tests in ``path`` that start a subprocess but lack the ``subprocess`` marker."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    module_marked = any(
        isinstance(stmt, ast.Assign | ast.AnnAssign)
        and any(isinstance(t, ast.Name) and t.id == "pytestmark" for t in _targets(stmt))
        and stmt.value is not None
        and _is_subprocess_mark(stmt.value)
        for stmt in tree.body
    )
    functions = _functions(tree)
    shared = ["conftest"] + [
        stmt.module
        for stmt in tree.body
        if isinstance(stmt, ast.ImportFrom) and stmt.level == 1 and (stmt.module or "").startswith("helpers_")
    ]
    for module in shared:  # the module's own names first, then the shared helpers and fixtures it can reach
        for name, fn in _functions(ast.parse((TESTS / f"{module}.py").read_text(encoding="utf-8"))).items():
            functions.setdefault(name, fn)
    spawning = {name for name, fn in functions.items() if _spawns_directly(fn)}
    grew = True
    while grew:  # helpers and fixtures that call spawning helpers spawn too
        grew = False
        for name, fn in functions.items():
            if name not in spawning and _uses(fn) & spawning:
                spawning.add(name)
                grew = True
    return [
        name
        for name in sorted(spawning)
        if name.startswith("test")
        and name in _functions(tree)
        and not module_marked
        and not any(_is_subprocess_mark(d) for d in functions[name].decorator_list)
    ]


def test_every_test_that_starts_a_subprocess_is_marked() -> None:
    missing = {p.name: names for p in sorted(TESTS.glob("test_*.py")) if (names := unmarked_spawning_tests(p))}
    assert not missing, f"add @pytest.mark.subprocess to: {missing}"


def test_the_detector_sees_helpers_and_marks(tmp_path) -> None:
    source = tmp_path / "test_sample.py"
    source.write_text(
        "import subprocess, sys, pytest\n"
        "def _run():\n    return subprocess.run([sys.executable, '-c', 'pass'])\n"
        "def _twice():\n    _run(); _run()\n"
        "def test_bare():\n    _twice()\n"
        "@pytest.mark.subprocess\ndef test_marked():\n    _run()\n"
        "def test_pure():\n    assert True\n"
    )
    assert unmarked_spawning_tests(source) == ["test_bare"]
    source.write_text(source.read_text() + "pytestmark = [pytest.mark.subprocess]\n")
    assert unmarked_spawning_tests(source) == []


def test_the_marker_is_registered(pytestconfig) -> None:
    assert any(line.startswith("subprocess:") for line in pytestconfig.getini("markers"))
