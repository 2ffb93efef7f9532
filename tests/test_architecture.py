"""The package map holds: no import circle, no module over the size limit, the layers
(checked by import-linter from pyproject.toml, run here too so `pytest` alone catches it)."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parents[1]
MAX_LINES = 400
WINGS = ("core", "tasks", "train", "inference", "adapt", "analysis", "experiments", "interop")


def strongly_connected(graph: grimp.ImportGraph) -> list[set[str]]:
    """Tarjan's algorithm over module imports (function-level imports included): every
    component with more than one module is an import circle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.find_modules_directly_imported_by(v):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.add(w)
                if w == v:
                    break
            out.append(comp)

    for m in sorted(graph.modules):
        if m not in index:
            visit(m)
    return out


def test_strongly_connected_finds_a_planted_circle():
    g = grimp.ImportGraph()
    for a, b in (("p.a", "p.b"), ("p.b", "p.c"), ("p.c", "p.a"), ("p.c", "p.d")):
        g.add_import(importer=a, imported=b)
    assert [c for c in strongly_connected(g) if len(c) > 1] == [{"p.a", "p.b", "p.c"}]


def import_circles(package: str) -> list[set[str]]:
    """The import circles of a package. Type-only imports (`if TYPE_CHECKING:`) count: a
    circle through them is still two modules that cannot be understood one without the other.
    A package's __init__ re-exporting its children is not a circle of the code itself."""
    graph = grimp.build_graph(package, exclude_type_checking_imports=False)
    return [c for c in strongly_connected(graph) if len(c) > 1 and not any(
        m == package or m.endswith("__init__") for m in c)]


def test_a_type_only_import_circle_is_found(tmp_path, monkeypatch):
    pkg = tmp_path / "typeonly_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from typeonly_pkg.b import B\n")
    (pkg / "b.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                              "    from typeonly_pkg.a import A\nclass B: ...\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert import_circles("typeonly_pkg") == [{"typeonly_pkg.a", "typeonly_pkg.b"}]


def test_no_import_circle():
    circles = import_circles("ctr")
    assert not circles, f"import circles: {circles}"


def test_no_module_over_the_size_limit():
    big = {str(p.relative_to(ROOT)): n for p in (ROOT / "ctr").rglob("*.py")
           if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not big, f"modules over {MAX_LINES} lines (split them by job): {big}"


def test_every_wing_is_a_package_with_a_docstring():
    for wing in WINGS:
        init = ROOT / "ctr" / wing / "__init__.py"
        assert init.exists() and init.read_text().startswith('"""'), wing


@pytest.mark.skipif(shutil.which("lint-imports", path=str(Path(sys.executable).parent)) is None,
                    reason="import-linter not installed (make setup installs it)")
def test_import_contracts_hold():
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    res = subprocess.run([exe, "--config", str(ROOT / "pyproject.toml")], cwd=ROOT,
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stdout[-3000:]


def test_tests_mirror_the_package_folders():
    test_dirs = {p.name for p in (ROOT / "tests").iterdir() if p.is_dir() and p.name != "__pycache__"}
    packages = {p.parent.name for p in (ROOT / "ctr").glob("*/__init__.py")} - {"bench"}
    assert test_dirs <= packages, f"test folders without a package: {test_dirs - packages}"
    assert set(WINGS) <= test_dirs, f"wings without tests: {set(WINGS) - test_dirs}"
