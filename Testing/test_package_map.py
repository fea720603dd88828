"""The package map of ``wdmcore``: every import, read from the source, points down to a lower floor.

A room is a sub-package (``hub``, ``models``, ...) or a top-level module (``errors``, ``worker``, ...); the
package's face (``wdmcore/__init__.py``) is a room of its own, at the top. Every import counts: at the top of a
file or inside a function, relative or absolute, and the names the face and the sub-packages import on first
use (``import_module`` with a fixed name, the face's ``_LAZY`` table). docs/engine.md ("Package layout") shows
the same floors.
"""

from __future__ import annotations

import ast
import importlib.util
from collections import defaultdict
from pathlib import Path

import pytest
from slicer_support import REPO_ROOT

PACKAGE = REPO_ROOT / "WDMCore" / "wdmcore"
FACE = "wdmcore"  # the package's __init__.py: load_model, generate, ... served on first use

# Bottom floor first. A room may import the rooms of lower floors only; a new room needs a floor here and in
# docs/engine.md.
FLOORS: tuple[frozenset[str], ...] = (
    frozenset({"errors", "vocabulary", "paths", "filemodes", "version"}),
    frozenset({"events", "devices", "interrupts", "hugepages", "wavelets", "volumes", "limits"}),
    frozenset({"progressbar", "networks", "diffusion", "data", "backends"}),
    frozenset({"samplers"}),
    frozenset({"models"}),
    frozenset({"hub", "training"}),
    frozenset({"loading"}),
    frozenset({"tasks", "evaluation", "distill"}),
    frozenset({"worker_requests", "worker_jobs"}),
    frozenset({"worker", "cli"}),
    frozenset({"__main__", FACE}),
)


def rooms_of(package: Path) -> set[str]:
    """The package's rooms: its sub-packages, its top-level modules and its face."""
    rooms = {FACE}
    for entry in package.iterdir():
        if entry.suffix == ".py" and entry.name != "__init__.py":
            rooms.add(entry.stem)
        elif entry.is_dir() and (entry / "__init__.py").is_file():
            rooms.add(entry.name)
    return rooms


def _module_name(package: Path, path: Path) -> str:
    parts = list(path.relative_to(package.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(package: Path, path: Path) -> list[tuple[str, int]]:
    """Every module name ``path`` imports, absolute, with its line: statements anywhere in the file, and
    ``import_module`` of a fixed name (the ``_LAZY`` table's names included)."""
    module = _module_name(package, path)
    # The anchor of relative imports: the module's package (a package's __init__ is its own anchor).
    anchor = module if path.name == "__init__.py" else module.rpartition(".")[0]
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: list[tuple[str, int]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = importlib.util.resolve_name("." * node.level + (node.module or ""), anchor) if node.level else ""
            if node.level and node.module is None:
                base = base.rstrip(".")
            base = base or node.module or ""
            # `from base import name` may import the sub-module base.name: count both, the room decides. The
            # package itself is no arrow (`from wdmcore import hub` imports the hub; its names are the face's).
            found += [(base, node.lineno)] if base != package.name else []
            found += [(f"{base}.{alias.name}", node.lineno) for alias in node.names]
        elif isinstance(node, ast.Call) and _called(node) == "import_module":
            name = _constant(node.args[0]) if node.args else None
            relative_to = _constant(node.args[1]) if len(node.args) > 1 else None
            if len(node.args) > 1 and getattr(node.args[1], "id", None) == "__name__":
                relative_to = module
            if name is not None and (relative_to is not None or not name.startswith(".")):
                found.append((importlib.util.resolve_name(name, relative_to or ""), node.lineno))
        elif isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "_LAZY" for t in node.targets):
            for value in getattr(node.value, "values", []):
                if isinstance(value, ast.Constant) and isinstance(value.value, str):
                    found.append((importlib.util.resolve_name(value.value, module), value.lineno))
    return found


def _called(node: ast.Call) -> str | None:
    return getattr(node.func, "id", getattr(node.func, "attr", None))


def _constant(node: ast.AST) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def room_of(package: Path, module: str, rooms: set[str]) -> str | None:
    """The room a module name belongs to (None: outside the package)."""
    parts = module.split(".")
    if parts[0] != package.name:
        return None
    if len(parts) > 1 and parts[1] in rooms:
        return parts[1]
    return FACE  # the package itself, or a name its face defines (__version__, load_model, ...)


def arrows_of(package: Path) -> dict[tuple[str, str], list[str]]:
    """(from room, to room) -> where (file:line), for every import between two different rooms."""
    rooms = rooms_of(package)
    arrows: dict[tuple[str, str], list[str]] = defaultdict(list)
    for path in sorted(package.rglob("*.py")):
        source = room_of(package, _module_name(package, path), rooms)
        for module, line in imported_modules(package, path):
            target = room_of(package, module, rooms)
            place = f"{path.relative_to(package.parent)}:{line}"
            if target is not None and target != source and place not in arrows[(source, target)]:
                arrows[(source, target)].append(place)
    return dict(arrows)


def find_circle(arrows: dict[tuple[str, str], list[str]]) -> list[str] | None:
    """A circle of rooms (first room repeated at the end), or None."""
    graph: dict[str, set[str]] = defaultdict(set)
    for source, target in arrows:
        graph[source].add(target)
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    path: list[str] = []

    def visit(room: str) -> list[str] | None:
        state[room] = 1
        path.append(room)
        for nxt in sorted(graph[room]):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (circle := visit(nxt)):
                return circle
        state[room] = 2
        path.pop()
        return None

    for room in sorted(graph):
        if room not in state and (circle := visit(room)):
            return circle
    return None


def floor_of(room: str) -> int:
    return next(i for i, floor in enumerate(FLOORS) if room in floor)


def test_every_room_has_one_floor():
    placed = [room for floor in FLOORS for room in floor]
    assert len(placed) == len(set(placed)), "a room is on two floors"
    missing = sorted(rooms_of(PACKAGE) - set(placed))
    assert not missing, f"rooms without a floor: {missing}; place them in FLOORS here and in docs/engine.md"
    gone = sorted(set(placed) - rooms_of(PACKAGE))
    assert not gone, f"FLOORS names rooms the package no longer has: {gone}"


def test_no_circle_between_rooms():
    arrows = arrows_of(PACKAGE)
    circle = find_circle(arrows)
    where = [arrows[(a, b)][0] for a, b in zip(circle, circle[1:], strict=False)] if circle else []
    assert circle is None, f"import circle {' -> '.join(circle)} (first imports: {', '.join(where)})"


def test_imports_point_down_only():
    placed = {room for floor in FLOORS for room in floor}
    upward = [
        f"{source} -> {target} ({', '.join(places)})"
        for (source, target), places in sorted(arrows_of(PACKAGE).items())
        if source in placed and target in placed and floor_of(target) >= floor_of(source)
    ]
    assert not upward, "imports that do not point to a lower floor:\n" + "\n".join(upward)


def test_the_map_sees_every_kind_of_import(tmp_path):
    """A package made to hide its imports: each kind must show up as an arrow, and their circle be found."""
    package = tmp_path / "pkg"
    (package / "low").mkdir(parents=True)
    (package / "__init__.py").write_text('_LAZY = {"thing": ".high"}\n')
    (package / "low" / "__init__.py").write_text("")
    (package / "low" / "inner.py").write_text("def late():\n    from ..high import thing\n    return thing\n")
    (package / "high.py").write_text(
        "from importlib import import_module\n\n"
        "def load():\n    return import_module('.low.inner', 'pkg')\n"
        "def face():\n    from . import __version__\n"
        "import pkg.mid\n"
    )
    (package / "mid.py").write_text("from .low import inner\n")
    arrows = arrows_of(package)
    assert set(arrows) == {("low", "high"), ("high", "low"), ("high", FACE), ("high", "mid"), ("mid", "low"),
                           (FACE, "high")}  # fmt: skip
    assert arrows[("low", "high")] == ["pkg/low/inner.py:2"]
    circle = find_circle(arrows)
    assert circle is not None and circle[0] == circle[-1] and len(circle) >= 3


MAX_LINES = 600
ENGINE_AND_BENCHMARK_FILES = sorted([*PACKAGE.rglob("*.py"), *(REPO_ROOT / "benchmarks").rglob("*.py")])


@pytest.mark.parametrize(
    "path", [p for p in ENGINE_AND_BENCHMARK_FILES if "__pycache__" not in p.parts], ids=lambda p: p.name
)
def test_no_engine_or_benchmark_file_is_over_the_size_limit(path):
    """A room of the engine or a benchmark is split along its ideas before it grows past this (the Slicer
    modules have the same limit in test_slicer_static.py)."""
    lines = len(path.read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_LINES, f"{path} has {lines} lines (at most {MAX_LINES}); split it along its ideas"
