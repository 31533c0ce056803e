"""The architecture: rooms with names, floors that import only downwards, no cycle, no private reach.

docs/architecture.md draws the rooms; these tests hold its rules on every source file.
"""

from __future__ import annotations

import ast
import pathlib

SRC = pathlib.Path(__file__).resolve().parents[1] / "src" / "napari_treg"

#: the ground floor and the public API: the only modules at the top of the package
TOP_MODULES = {"__init__", "api", "errors", "failures", "memory", "noise", "settings"}
#: the rooms (sub-packages) a reader finds at the top
ROOMS = {"batch", "cli", "engine", "imaging", "io", "models", "operators", "plugin", "solver"}
#: front ends: nothing below them imports them
FRONT_ENDS = ("napari_treg.api", "napari_treg.cli", "napari_treg.plugin", "napari_treg.batch")


def _imports(path: pathlib.Path) -> list[tuple[str, list[str]]]:
    """``(module, names)`` imported by a source file, relative imports resolved within napari_treg."""
    package = ["napari_treg", *path.relative_to(SRC).with_suffix("").parts]
    if package[-1] == "__init__":
        package = package[:-1]
    else:
        package = package[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            found.append((module, [alias.name for alias in node.names]))
        elif isinstance(node, ast.Import):
            found.extend((alias.name, []) for alias in node.names)
    return found


def _module_name(path: pathlib.Path) -> str:
    parts = ["napari_treg", *path.relative_to(SRC).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_no_module_imports_another_modules_private_names():
    offenders = []
    for path in SRC.rglob("*.py"):
        for module, names in _imports(path):
            if module.startswith("napari_treg"):
                offenders += [f"{_module_name(path)}: {module}.{n}" for n in names if n.startswith("_")]
    assert not offenders, offenders


def test_the_import_graph_has_no_cycle():
    modules = {_module_name(p): p for p in SRC.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        targets = set()
        for module, names in _imports(path):
            for candidate in [f"{module}.{n}" for n in names] + [module]:
                if candidate in modules and candidate != name:
                    targets.add(candidate)
                    break
        graph[name] = targets
    # a package's __init__ re-exporting its modules is not a cycle of behaviour: drop parent -> child edges
    graph = {m: {t for t in ts if not t.startswith(m + ".")} for m, ts in graph.items()}
    state: dict[str, int] = {}

    def visit(node, trail):
        state[node] = 1
        for target in graph[node]:
            if state.get(target) == 1:
                raise AssertionError(" -> ".join([*trail, node, target]))
            if target not in state:
                visit(target, [*trail, node])
        state[node] = 2

    for node in graph:
        if node not in state:
            visit(node, [])


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p) for p in SRC.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for path in SRC.rglob("*.py"):
        targets = set()
        for module, names in _imports(path):
            for candidate in [f"{module}.{n}" for n in names] + [module]:
                if candidate in modules:
                    targets.add(candidate)
                    break
        graph[_module_name(path)] = targets
    return graph


def _within(module: str, room: str) -> bool:
    return module == room or module.startswith(room + ".")


def test_the_top_of_the_package_holds_at_most_seven_modules_and_the_rooms():
    modules = {p.stem for p in SRC.glob("*.py")}
    rooms = {p.name for p in SRC.iterdir() if (p / "__init__.py").exists()}
    assert modules <= TOP_MODULES and len(modules) <= 7, sorted(modules - TOP_MODULES)
    assert rooms == ROOMS


def test_the_engine_never_imports_files_or_a_front_end():
    offenders = [
        f"{source} -> {target}"
        for source, targets in _graph().items()
        if _within(source, "napari_treg.engine")
        for target in targets
        if _within(target, "napari_treg.io") or any(_within(target, front) for front in FRONT_ENDS)
    ]
    assert not offenders, offenders


def test_the_rooms_below_the_engine_never_import_it():
    lower = ("napari_treg.operators", "napari_treg.models", "napari_treg.solver", "napari_treg.imaging")
    offenders = [
        f"{source} -> {target}"
        for source, targets in _graph().items()
        if any(_within(source, room) for room in lower)
        for target in targets
        if _within(target, "napari_treg.engine") or any(_within(target, front) for front in FRONT_ENDS)
    ]
    assert not offenders, offenders
