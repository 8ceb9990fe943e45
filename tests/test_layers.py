"""The import graph of ``src/``: no circles, and no module importing from a layer above its own
(docs/architecture.md, "Layers"). Imports inside functions count too. Modules are cut by
purpose, not by size (no line limit). ``python tests/test_layers.py`` prints the circles, upward imports and largest modules."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "chexnet_pl"
COMMANDS = {"train", "evaluate", "predict", "visualize", "localize", "download", "prepare",
            "import_weights", "export", "serve"}  # fmt: skip
GROUND = {"errors", "files", "validation", "label_sets", "device", "config_defaults", "components",
          "config_location", "checkpoints.file_io"}  # fmt: skip
LAYERS = {"data": 1, "models": 1, "checkpoints": 2, "model_identity": 2, "evaluation": 2, "visualization": 2, "localization": 2, "ood": 2,
          "serving": 2, "training": 2, "callbacks": 2, "api": 5}  # fmt: skip


def layer(module: str) -> int:
    """0 the ground, 1 data and models, 2 what uses them, 3 the commands' machinery (command_runner,
    settings, overrides, --help), 4 the commands, 5 the Python API (``chexnet_pl.api``: built on
    all of it; the package reaches it by name, lazily)."""
    name = module.split(".")[1] if "." in module else ""
    if not name or name in GROUND or module.partition(".")[2] in GROUND:
        return 0
    if name in COMMANDS and module.count(".") == 1:
        return 4
    return LAYERS.get(name, 3)


def imports() -> dict[str, set[str]]:
    """Module → the project modules it imports (``from chexnet_pl.x import y`` counts x, and
    x.y when y is a module)."""
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found = graph.setdefault(module, set())
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("chexnet_pl."):
                found.add(node.module)
                for alias in node.names:
                    name = f"{node.module}.{alias.name}"
                    if (PACKAGE.parent / (name.replace(".", "/") + ".py")).is_file():
                        found.add(name)
            elif isinstance(node, ast.Import):
                found |= {a.name for a in node.names if a.name.startswith("chexnet_pl.")}
    return graph


def test_no_module_imports_from_a_layer_above_its_own():
    assert not upward(), upward()


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import circles a depth-first walk finds (each as the modules around it)."""
    found, done = [], set()

    def visit(module: str, path: list[str]) -> None:
        if module in path:
            found.append(path[path.index(module) :] + [module])
            return
        if module in done:
            return
        for target in sorted(graph.get(module, ())):
            visit(target, [*path, module])
        done.add(module)

    for module in sorted(graph):
        visit(module, [])
    return found


def test_the_import_graph_has_no_circles():
    assert not circles(imports())


def test_the_checks_see_a_circle_and_an_upward_import():
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert not circles({"a": {"b", "c"}, "b": {"c"}, "c": set()})
    assert (
        layer("chexnet_pl.files")
        == layer("chexnet_pl.checkpoints.file_io")
        < layer("chexnet_pl.data.cache")
        < layer("chexnet_pl.evaluation.report")
        < layer("chexnet_pl.command_runner")
        < layer("chexnet_pl.train")
    )
    graph = imports()
    assert "chexnet_pl.files" in graph["chexnet_pl.data.file_problems"]
    assert "chexnet_pl.data.http_fetch" in graph["chexnet_pl.data.download"]


def upward() -> list[tuple[str, str]]:
    return sorted(
        (m, t) for m, targets in imports().items() for t in targets if layer(t) > layer(m)
    )


if __name__ == "__main__":
    graph = imports()
    print(f"modules: {len(graph)}; import circles: {circles(graph) or 0}")
    print(f"upward imports: {upward() or 0}")
    sizes = sorted(((len(p.read_text().splitlines()), p.relative_to(PACKAGE)) for p in
                    PACKAGE.rglob("*.py")), reverse=True)  # fmt: skip
    print("largest:", ", ".join(f"{p} {n}" for n, p in sizes[:8]))
