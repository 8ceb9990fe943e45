"""The layout of ``src/chexnet_pl`` as an import graph (every import, function-level ones too):
no circles, the data and model layers import nothing from the commands above them, and the ground
floor (checkpoint files, config location, errors, file helpers) nothing of the project's upper
floors. ``python tests/test_layout.py`` prints the graph's circles, upward imports and module sizes.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
COMMANDS = ("train", "evaluate", "predict", "visualize", "localize", "download", "prepare",
            "import_weights", "export", "serve", "checkpoints")  # fmt: skip
GROUND = {"checkpoint_io": {"errors", "files"}, "config_location": set(), "errors": set(),
          "files": set()}  # fmt: skip
MAX_LINES = 350


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted((SRC / "chexnet_pl").rglob("*.py")):
        name = ".".join(path.relative_to(SRC).with_suffix("").parts).removesuffix(".__init__")
        found[name] = path
    return found


def import_graph() -> dict[str, set[str]]:
    """Module → the project's modules it imports (anywhere in it)."""
    known = modules()

    def owner(name: str) -> str | None:
        while name and name not in known:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for name, path in known.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                targets |= {f"{node.module}.{alias.name}" for alias in node.names}
        found = {owner(t) for t in targets if t.startswith("chexnet_pl")}
        graph[name] = {t for t in found if t and t != name}
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for node in graph:
        if node not in index:
            visit(node)
    return groups


def upward_imports(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    """Imports from ``data/`` or ``models/`` of a command or ``checkpoints`` (which build on them),
    and from a ground-floor module of anything but the ground floor."""
    above = {f"chexnet_pl.{name}" for name in COMMANDS}
    found = [(m, t) for m, targets in graph.items() for t in sorted(targets)
             if m.startswith(("chexnet_pl.data", "chexnet_pl.models")) and t in above]  # fmt: skip
    for name, allowed in GROUND.items():
        found += [(f"chexnet_pl.{name}", t) for t in sorted(graph.get(f"chexnet_pl.{name}", ()))
                  if t.removeprefix("chexnet_pl.") not in allowed]  # fmt: skip
    return found


def test_the_import_graph_has_no_circles():
    assert circles(import_graph()) == []


def test_lower_floors_do_not_import_the_ones_above():
    assert upward_imports(import_graph()) == []


if __name__ == "__main__":
    graph = import_graph()
    print(f"modules: {len(graph)}; import circles: {circles(graph) or 0}")
    print(f"upward imports (data/, models/ → commands; ground floor → above): "
          f"{upward_imports(graph) or 0}")  # fmt: skip
    sizes = sorted(
        ((len(p.read_text().splitlines()), n) for n, p in modules().items()), reverse=True
    )
    print(f"modules over {MAX_LINES} lines: {[(n, s) for s, n in sizes if s > MAX_LINES] or 0}")
    print("largest:", ", ".join(f"{n.removeprefix('chexnet_pl.')} {s}" for s, n in sizes[:8]))
