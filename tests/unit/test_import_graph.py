"""The package tree shows the layers: imports run downward only, and never in a circle.

Every ``import`` in ``sdexec/`` is read with :mod:`ast`, wherever it is: at
the top of a module, inside a function (the CLI's lazy imports), under
``TYPE_CHECKING``, or as ``importlib.import_module("sdexec....")`` with a
constant name.  An import of a name that is a module counts as an import of
that module (``from sdexec.base import uri``); otherwise of the module or
package face it names.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2] / "sdexec"

#: The layers, top to bottom.  A package may import its own modules and the
#: packages of the layers below its own, nothing else.  The package face
#: ``sdexec`` (``__version__``) is part of the bottom layer.
LAYERS: list[tuple[str, ...]] = [
    ("cli",),  # the sdexec command; `sdexec proxy` runs proxy/
    ("proxy",),
    ("cluster", "flux"),  # site operations across many ranks; the Flux broker module
    ("client",),
    ("server",),  # the RFC 42 service, and the standalone daemon that wires it up
    ("security",),  # the router's gate and admission; guests' exec properties
    ("broker",),
    ("systemd",),
    ("transport",),
    ("proto",),
    ("base", "unit", ""),  # foundations; the programs run inside units; the face
]
#: What may sit directly in sdexec/ besides the packages.
LOOSE_ALLOWED = {"__init__.py", "__main__.py"}


def module_name(path: Path) -> str:
    parts = ["sdexec", *path.relative_to(ROOT).with_suffix("").parts]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES: dict[str, Path] = {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _imported(node: ast.AST, module: str, is_package: bool) -> Iterator[str]:
    """The sdexec modules one AST node imports."""
    if isinstance(node, ast.Import):
        for alias in node.names:
            yield alias.name
    elif isinstance(node, ast.ImportFrom):
        if node.level:
            base = module.split(".")
            keep = len(base) - node.level + (1 if is_package else 0)
            name = ".".join(base[:keep] + ([node.module] if node.module else []))
        else:
            name = node.module or ""
        for alias in node.names:
            full = f"{name}.{alias.name}"
            yield full if full in MODULES else name
    elif (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "import_module"
        and node.args
        and isinstance(node.args[0], ast.Constant)
        and isinstance(node.args[0].value, str)
    ):
        yield node.args[0].value


def imports_of(module: str) -> set[str]:
    """The sdexec modules ``module`` imports, anywhere in its source."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(), str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        for name in _imported(node, module, path.name == "__init__.py"):
            if name == "sdexec" or name.startswith("sdexec."):
                found.add(name)
    found.discard(module)
    return found


GRAPH: dict[str, set[str]] = {m: imports_of(m) for m in MODULES}


def package_of(module: str) -> str:
    """The top-level package of a module ("" for the face ``sdexec`` itself)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def layer_of(package: str) -> int:
    for index, row in enumerate(LAYERS):
        if package in row:
            return index
    raise LookupError(package)


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Each strongly connected group of more than one module (Tarjan), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


# --- the checker itself ------------------------------------------------------------------


def test_the_cycle_finder_finds_a_circle_and_only_a_circle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_imports_in_functions_under_type_checking_and_relative_are_seen() -> None:
    source = """
from typing import TYPE_CHECKING
from . import router
from .request import Request
if TYPE_CHECKING:
    from sdexec.proto.message import Message
def f():
    import sdexec.base.errors
    importlib.import_module("sdexec.server.daemon")
"""
    tree = ast.parse(source)
    found = {n for node in ast.walk(tree) for n in _imported(node, "sdexec.broker.events", False)}
    assert found - {"typing"} == {
        "sdexec.broker.router",
        "sdexec.broker.request",
        "sdexec.proto.message",
        "sdexec.base.errors",
        "sdexec.server.daemon",
    }


# --- the tree ------------------------------------------------------------------------------


def test_the_graph_sees_the_known_imports() -> None:
    # A lazy import in a function, and an import only for type checking.
    assert "sdexec.server.daemon" in GRAPH["sdexec.cli.main"]
    assert "sdexec.broker.request" in GRAPH["sdexec.server.process"]


def test_no_loose_modules_beside_the_packages() -> None:
    loose = sorted(p.name for p in ROOT.glob("*.py") if p.name not in LOOSE_ALLOWED)
    assert not loose, f"modules outside any package: {loose}"


def test_every_package_has_a_layer() -> None:
    packages = {package_of(m) for m in MODULES}
    placed = {p for row in LAYERS for p in row}
    assert packages <= placed, f"packages without a layer in LAYERS: {packages - placed}"


def test_no_import_circles() -> None:
    assert cycles(GRAPH) == []


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_run_down_the_layers(module: str) -> None:
    mine = package_of(module)
    upward = sorted(
        target
        for target in GRAPH[module]
        if package_of(target) != mine and layer_of(package_of(target)) <= layer_of(mine)
    )
    assert not upward, f"{module} imports a layer above or beside its own: {upward}"


def test_package_faces_import_nothing() -> None:
    # So that importing one module of a package never loads its siblings.
    faces = [m for m, p in MODULES.items() if p.name == "__init__.py"]
    assert {m: sorted(GRAPH[m]) for m in faces if GRAPH[m]} == {}


def test_what_runs_inside_a_unit_imports_no_sdexec() -> None:
    # Started as "python -I -S FILE": sdexec is not on its sys.path.  A program
    # may use a sibling file of sdexec/unit/ (the terminal holder its screen
    # model), found in its own directory; nothing else of sdexec.
    inside = {m: sorted(GRAPH[m]) for m in MODULES if package_of(m) == "unit"}
    assert inside
    outside = {m: [t for t in targets if t not in inside] for m, targets in inside.items()}
    assert all(not targets for targets in outside.values()), outside
    assert GRAPH["sdexec.unit.pty_screen"] == set()
