"""The code's layers (../shared/ARCHITECTURE.md, CONTRIBUTING.md): a module imports only from its own layer or the
ones below, nothing imports in a circle, and every module has a layer (a new one must be placed)."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Layer -> module prefixes; the longest matching prefix decides. A prefix matches its module and the modules under it,
# except the package itself ("playground", its __init__): as a prefix it would place every module, new ones too.
PACKAGE = "playground"
LAYERS = {
    7: ("app", "playground.__main__", "playground.ui", "playground.cli", "playground.simulate"),  # faces
    6: (  # the front door
        "playground.core",
        "playground.serving",
        "playground.recording",
        "playground.data_sets",
        "playground.dashboard",
        "playground.publishing",
        "playground.trainer_process",
        "playground.judging",
        "playground.reward_export",
    ),
    5: (
        "playground.training",
        "playground.drift",
        "playground.explain",
        "playground.ablation",
        "playground.overoptimization",
    ),  # learning
    4: ("playground.generation", "playground.scoring", "playground.reward_scoring", "playground.leases"),  # generation
    3: (
        "playground.models",
        "playground.reward_models",
        "playground.conversion",
        "playground.runtimes",
        "playground.decoding",
        "playground.int8",
    ),  # models, runtimes
    2: ("playground.store", "playground.locks"),  # store
    1: (  # rules
        PACKAGE,
        "playground.arms",
        "playground.votes",
        "playground.prompting",
        "playground.leaderboard",
        "playground.verdicts",
        "playground.oracles",
        "playground.voters",
        "playground.settings",
        "playground.options",
        "playground.errors",
        "playground.processes",
    ),
}


def layer_of(module: str) -> int | None:
    matches = [
        (len(prefix), layer)
        for layer, prefixes in LAYERS.items()
        for prefix in prefixes
        if module == prefix or (prefix != PACKAGE and module.startswith(prefix + "."))
    ]
    return max(matches)[1] if matches else None


def unplaced(names) -> list[str]:
    return [name for name in names if layer_of(name) is None]


def modules() -> dict[str, Path]:
    found = {"app": REPO / "app.py"}
    for path in (REPO / "playground").rglob("*.py"):
        parts = path.relative_to(REPO).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports(module: str, path: Path, top_level_only: bool) -> set[str]:
    """The playground modules `module` imports (`from .x import name` counts as .x and, if a module, .x.name)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else ast.walk(tree)
    found = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found |= {target} | {f"{target}.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
    known = modules()
    return {name for name in found if name in known and name != module}


def test_every_module_has_a_layer():
    assert unplaced(modules()) == []
    # A module no layer names is caught, at the top of the package and inside a placed package alike.
    assert unplaced(["playground.nowhere", "playground.store.records", "playground.ui.new_tab"]) == [
        "playground.nowhere"
    ]


def test_no_module_imports_from_a_higher_layer():
    upward = [
        f"{module} (layer {layer_of(module)}) imports {target} (layer {layer_of(target)})"
        for module, path in modules().items()
        for target in imports(module, path, top_level_only=False)
        if layer_of(target) > layer_of(module)
    ]
    assert upward == []


def circles_in(graph: dict[str, set[str]]) -> list[list[str]]:
    circles, done = [], set()

    def visit(module: str, trail: list[str]) -> None:
        if module in trail:
            circles.append(trail[trail.index(module) :] + [module])
            return
        if module in done:
            return
        for target in sorted(graph.get(module, ())):
            visit(target, [*trail, module])
        done.add(module)

    for module in sorted(graph):
        visit(module, [])
    return circles


def test_no_import_circles():
    graph = {module: imports(module, path, top_level_only=True) for module, path in modules().items()}
    # `from . import x` in a package's module names the package too; that is not a circle with its __init__.
    graph = {m: {t for t in targets if not m.startswith(t + ".")} for m, targets in graph.items()}
    assert circles_in(graph) == []


def test_the_checks_see_what_they_look_for():
    assert circles_in({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]
    assert circles_in({"a": {"b"}, "b": set()}) == []
    assert layer_of("playground.store.records") == 2 and layer_of("playground.ui.compare") == 7
    assert layer_of("playground.runtimes.onnx.worker") == 3 and layer_of("somewhere.else") is None
    assert layer_of("playground") == 1 and layer_of("playground.nowhere") is None
    assert {"playground.generation", "playground.serving"} <= imports(
        "playground.core", REPO / "playground/core.py", top_level_only=True
    )
