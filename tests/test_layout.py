"""The package's layout: no module imports Ray as it is imported, and no two modules import
each other (one direction of dependency per pair, cli.py -> ... -> store)."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "clipshift"

# Every module of clipshift imported where Ray cannot be (as if it were not installed).
IMPORT_ALL_WITHOUT_RAY = """
import importlib, pkgutil, sys
sys.modules["ray"] = None  # `import ray` now raises ImportError
import clipshift
for module in pkgutil.walk_packages(clipshift.__path__, "clipshift."):
    importlib.import_module(module.name)
print(" ".join(sorted(m for m in sys.modules if m.startswith("clipshift"))))
"""


def test_no_module_imports_ray_at_import_time():
    result = subprocess.run(
        [sys.executable, "-c", IMPORT_ALL_WITHOUT_RAY],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    imported = result.stdout.split()
    assert "clipshift.engines.ray" in imported and "clipshift.ingest" in imported


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def resolve(module: str, is_package: bool, level: int, target: str | None) -> str:
    """The absolute module a `from ... import` names (`level` dots, relative to `module`)."""
    if level == 0:
        return target or ""
    base = module.split(".")
    if not is_package:
        base = base[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([target] if target else []))


def top_level_imports(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    """The imports run as the module is imported: at module level, in `if` / `try` blocks
    there too (TYPE_CHECKING included: a cycle there is still a cycle of layers), never in a
    function."""
    found: list[ast.Import | ast.ImportFrom] = []
    body = list(tree.body)
    while body:
        node = body.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        elif isinstance(node, (ast.If, ast.Try, ast.With)):
            for block in ("body", "orelse", "finalbody", "handlers"):
                body.extend(getattr(node, block, []))
        elif isinstance(node, ast.ExceptHandler):
            body.extend(node.body)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        for node in top_level_imports(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = resolve(name, is_package, node.level, node.module)
                # `from . import x` imports the module x where there is one, else a name of .
                targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
            for target in targets:
                if target in modules and target != name:
                    graph[name].add(target)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> list[str] | None:
        if node in path:
            return path[path.index(node) :] + [node]
        if node in done:
            return None
        for child in sorted(graph[node]):
            cycle = visit(child, path + [node])
            if cycle:
                return cycle
        done.add(node)
        return None

    for node in sorted(graph):
        cycle = visit(node, [])
        if cycle:
            return cycle
    return None


def test_the_import_graph_has_no_cycle():
    graph = import_graph()
    assert "clipshift.engines.job" in graph["clipshift.ingest"]  # the graph is read at all
    # a package's __init__ that gathers its modules is not a cycle with them
    for name in graph:
        graph[name] = {t for t in graph[name] if not name.startswith(t + ".")}
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_the_wheel_lists_every_package():
    """setuptools is given its packages by name (sql/ and migrations/ are mapped into the
    package): one left out of pyproject.toml installs without its modules."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    found = {
        ".".join(init.parent.relative_to(ROOT).parts)
        for init in PACKAGE.rglob("__init__.py")
        if "__pycache__" not in init.parts
    }
    assert found <= set(config["packages"]), found - set(config["packages"])
