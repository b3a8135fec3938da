"""The package's layers (docs/ARCHITECTURE.md, "Where things go"): no import runs up them, and no modules import
each other in a circle. Read from the code with `ast`, so a function-local import counts too."""

from __future__ import annotations

import ast
import pathlib

# Lowest first: a module may import its own layer and those before it.
LAYERS = ("errors", "progress", "quiet", "io", "config", "presets", "model", "data", "eval", "infer", "train",
          "benchmarks", "demo", "cli", "__main__")
ROOT = pathlib.Path(__file__).resolve().parents[1] / "isl"


def _modules() -> dict[str, pathlib.Path]:
    modules = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def _imports(path: pathlib.Path, modules: dict[str, pathlib.Path], top_level_only: bool) -> set[str]:
    """The `isl` modules a file imports (an `isl.x.y` name that is no module counts as `isl.x`)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = set()
    for node in (tree.body if top_level_only else ast.walk(tree)):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("isl"):
            names = [f"{node.module}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names if alias.name.startswith("isl")]
        for name in names:
            while name not in modules and "." in name:
                name = name.rsplit(".", 1)[0]
            if name in modules and name != "isl":
                found.add(name)
    return found


def _layer(module: str) -> int:
    return LAYERS.index(module.split(".")[1])


def test_no_import_runs_up_the_layers():
    modules = _modules()
    upward = [f"{module} -> {target}" for module, path in modules.items() if module != "isl"
              for target in sorted(_imports(path, modules, top_level_only=False)) if _layer(target) > _layer(module)]
    assert upward == []


def test_no_modules_import_each_other_in_a_circle():
    modules = _modules()
    graph = {module: _imports(path, modules, top_level_only=False) for module, path in modules.items()}
    circles = []
    for start in graph:
        stack, seen = [(start, (start,))], set()
        while stack:
            module, trail = stack.pop()
            for target in graph[module]:
                if target == start:
                    circles.append(" -> ".join(trail + (start,)))
                elif target not in seen:
                    seen.add(target)
                    stack.append((target, trail + (target,)))
    assert circles == []
