"""The package's import contract, read from the source (no import-linter needed).

Layers, lowest first: ``models`` < ``methods`` < the library around them (adapters, config,
data, factory, flops, interop, multitask) < ``engine`` and ``bench`` < ``demo`` < ``cli``.  A module
may import from its own layer and the ones below; ``errors``, ``fileio`` and ``_version`` are
usable everywhere; the package root (``aptune/__init__.py``) only re-exports.  Function-local
imports count too: a lazy import that breaks the layering is still a dependency.  And the
graph of module-level imports has no cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "aptune"
BASE = ("errors", "fileio", "_version")
LAYERS = [
    ("models",),
    ("methods",),
    ("adapters", "config", "data", "factory", "flops", "interop", "multitask"),
    ("engine", "bench"),
    ("demo",),
    ("cli", "__main__"),
]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, top_level_only: bool) -> set[str]:
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else ast.walk(tree)
    found = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("aptune"):
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("aptune"))
    return found


def layer_of(module: str) -> int | None:
    parts = module.split(".")
    if len(parts) < 2 or parts[1] in BASE:
        return None
    for rank, members in enumerate(LAYERS):
        if parts[1] in members:
            return rank
    raise AssertionError(f"{module} belongs to no layer: add it to LAYERS in {Path(__file__).name}")


def sources() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def test_no_module_imports_from_a_layer_above_its_own():
    modules = sources()
    broken = []
    for module, path in modules.items():
        mine = layer_of(module)
        if mine is None:
            continue
        for target in imports(path, top_level_only=False):
            if target not in modules:
                continue  # a name imported from a module, not a module
            theirs = layer_of(target)
            if target != "aptune" and theirs is not None and theirs > mine:
                broken.append(f"{module} -> {target}")
            if target == "aptune":
                broken.append(f"{module} -> aptune (the root only re-exports; import from the module)")
    assert not broken, "imports against the layering:\n" + "\n".join(broken)


def test_module_level_imports_have_no_cycle():
    modules = sources()
    graph = {m: {t for t in imports(p, top_level_only=True) if t in modules and t != m} for m, p in modules.items()}
    for module in graph:  # a package's submodule imports the package first: not a cycle of its own
        graph[module] = {t for t in graph[module] if not module.startswith(t + ".")}
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = 1
        path.append(module)
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                return path[path.index(target) :] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        state[module] = 2
        path.pop()
        return None

    for module in sorted(graph):
        if module not in state:
            cycle = visit(module)
            assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_contract_sees_real_imports():
    # the checks above must not pass by reading nothing
    engine = imports(PACKAGE / "engine" / "trainer.py", top_level_only=True)
    assert any(name.startswith("aptune.factory") for name in engine)
    assert layer_of("aptune.cli.train") > layer_of("aptune.engine.trainer") > layer_of("aptune.models.vit")
