"""The package's shape: no import cycles, and no import from a lower layer into a higher one.

The layer order is declared here, once (ARCHITECTURE.md explains it). Every import between
servesim modules counts, including imports inside functions: a lazy import that points upwards
is still an arrow the wrong way.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "servesim"

# Lowest first. A module may import from its own layer and the layers before it.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("servesim.errors", "servesim.tables"),
    ("servesim.spec",),
    ("servesim.predictor",),
    ("servesim.sim",),
    ("servesim.planner",),
    ("servesim.report",),
    ("servesim.measure",),
    ("servesim.cli", "servesim.api", "servesim"),
)


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(SRC.rglob("*.py"))}


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """servesim modules `name` imports (a `from pkg import sub` of a submodule counts as sub)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in known]
            targets = targets or [base]
        else:
            continue
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t.startswith("servesim") and t != name:
                out.add(t)
    return out


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    known = set(mods)
    return {name: _imports(name, path, known) for name, path in mods.items()}


def _layer(name: str) -> int:
    best, rank = -1, -1
    for i, prefixes in enumerate(LAYERS):
        for p in prefixes:
            if (name == p or name.startswith(p + ".")) and len(p) > best:
                best, rank = len(p), i
    if rank < 0:
        raise AssertionError(f"{name} belongs to no layer; add it to LAYERS")
    return rank


def test_every_module_belongs_to_a_layer() -> None:
    for name in _graph():
        _layer(name)


def _upward(graph: dict[str, set[str]]) -> list[str]:
    """Imports from a module into a higher layer (a package may import its own submodules)."""
    return [
        f"{a} (layer {_layer(a)}) imports {b} (layer {_layer(b)})"
        for a, deps in sorted(graph.items())
        for b in sorted(deps)
        if _layer(b) > _layer(a) and not (a == "servesim" or b.startswith(a + "."))
    ]


def test_no_import_points_up_the_layers() -> None:
    wrong = _upward(_graph())
    assert not wrong, "\n".join(wrong)


def test_an_upward_import_is_caught() -> None:
    graph = {"servesim.sim.replica": {"servesim.planner.capacity", "servesim.spec.model"}}
    assert _upward(graph) == [
        "servesim.sim.replica (layer 3) imports servesim.planner.capacity (layer 4)"
    ]


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                return [*stack[stack.index(m) :], m]
            if m not in state and (found := visit(m)):
                return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state and (found := visit(n)):
            return found
    return None


def test_no_import_cycles() -> None:
    # A package importing its own submodules (for its public face) is not a cycle.
    graph = {a: {b for b in deps if not b.startswith(a + ".")} for a, deps in _graph().items()}
    found = _cycle(graph)
    assert found is None, " -> ".join(found or [])


@pytest.mark.parametrize(
    ("graph", "expected"),
    [({"a": {"b"}, "b": {"a"}}, ["a", "b", "a"]), ({"a": {"b"}, "b": set()}, None)],
)
def test_the_cycle_finder_finds_cycles(graph, expected) -> None:
    assert _cycle(graph) == expected


def test_architecture_md_names_every_module() -> None:
    """ARCHITECTURE.md lists each module under its package's heading, so a change that adds,
    moves or renames one keeps the page true in the same commit."""
    page = (SRC.parents[1] / "ARCHITECTURE.md").read_text(encoding="utf-8")
    sections = {}
    for part in page.split("\n## ")[1:]:
        title, _, body = part.partition("\n")
        folder = title.split("`")[1].rstrip("/") if "`" in title else ""
        sections[folder] = body
    missing = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC)
        if rel.name == "__init__.py":
            continue
        folder = "servesim" if len(rel.parts) == 1 else rel.parts[0]
        if f"`{rel.name}`" not in sections.get(folder, "") and rel.name not in sections.get(
            folder, ""
        ):
            missing.append(str(rel))
    assert not missing, f"ARCHITECTURE.md does not list {missing}"
