"""The layers hold: `jobs` <- `worker` <- `orchestrator`, nothing imported upward, no import cycle, and the
spec and store rooms (what the client loads) import no training stack."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("jobs", "worker", "orchestrator")
LAYER = {"jobs": 0, "worker": 1, "orchestrator": 2}
HEAVY = {"torch", "torchvision", "timm", "cv2"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> list[tuple[str, bool]]:
    """(imported module, at module level?) of every import in a file."""
    tree = ast.parse(path.read_text())
    top = {id(n) for n in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(a.name, id(node) in top) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found += [(f"{node.module}.{a.name}", id(node) in top) for a in node.names] + [
                (node.module, id(node) in top)
            ]
    return found


def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}
    edges = {}
    for name, path in modules.items():
        edges[name] = {m for m, top in imports(path) if top and m in modules and m != name}
    return edges


def test_nothing_is_imported_upward():
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            for module, _ in imports(path):
                root = module.split(".")[0]
                if root in LAYER:
                    assert LAYER[root] <= LAYER[pkg], f"{path.relative_to(ROOT)} imports {module}"


def test_no_import_cycle_at_module_level():
    edges = graph()
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " -> ".join([*trail[trail.index(nxt) :], nxt]))
            if nxt not in state:
                visit(nxt, [*trail, nxt])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])


def test_the_spec_store_and_scoring_rooms_import_no_training_stack():
    for room in ("jobs/spec", "jobs/store", "jobs/scoring", "jobs/report"):
        for path in (ROOT / room).rglob("*.py"):
            heavy = {m.split(".")[0] for m, top in imports(path) if top} & HEAVY  # a function may import lazily
            assert not heavy, f"{path.relative_to(ROOT)} imports {heavy}"
