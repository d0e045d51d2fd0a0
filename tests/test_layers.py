"""The package's layers, read off its source: imports flow one way (cli → harness → methods, tasks → base)
and no module imports itself back through others, function-local imports included (docs/architecture.md)."""

import ast
from pathlib import Path

from adamole_bench.base.paths import package_root

ROOT = package_root()
# The higher a layer, the more it may import; a layer imports only from layers below it, or from itself.
LAYERS = {"base": 0, "methods": 1, "tasks": 1, "harness": 2, "cli": 3, "__init__": 3}
# Inside harness/, the stages in the order the data flows back up (docs/architecture.md): a stage imports
# only stages before it in this list, or itself. Stages of one rank do not import each other.
STAGES = {"store": 0, "model": 1, "settings": 2, "train": 3, "evaluate": 3, "report": 3, "run": 4, "plan": 4, "check": 5, "bench": 5, "tune": 5}
SKIPPED = ("tests", "scripts", ".venv", "build")


def _modules() -> dict[str, Path]:
    """Dotted names (`harness.sweep`, `methods.lora.model`) of every module of the package."""
    found = {}
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[0] in SKIPPED or any(part.startswith(".") for part in parts):
            continue
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts) or "__init__"] = path
    return found


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package's own modules that `name` imports, anywhere in its body."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".") if package and package != "__init__" else []
                base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
                stem = ".".join([*base, *(node.module.split(".") if node.module else [])])
            elif node.module and node.module.startswith("adamole_bench"):
                stem = node.module.removeprefix("adamole_bench").lstrip(".")
            else:
                continue
            for alias in node.names:
                child = f"{stem}.{alias.name}" if stem else alias.name
                targets.add(child if child in modules else stem or "__init__")
        elif isinstance(node, ast.Import):
            targets |= {a.name.removeprefix("adamole_bench.") for a in node.names if a.name.startswith("adamole_bench.")}
    return {t for t in targets if t in modules and t != name}


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _layer(module: str) -> tuple[int, int]:
    """(layer, stage): harness modules also carry their stage's rank; every harness module lives in a stage."""
    top, _, rest = module.partition(".")
    if top != "harness":
        return LAYERS[top], 0
    return LAYERS[top], STAGES[rest.partition(".")[0]] if rest else max(STAGES.values()) + 1


def _reaches_up(importer: str, imported: str) -> bool:
    (layer_a, stage_a), (layer_b, stage_b) = _layer(importer), _layer(imported)
    if layer_a != layer_b or not importer.startswith("harness."):
        return layer_b > layer_a
    same_stage = importer.split(".")[:2] == imported.split(".")[:2]
    return not same_stage and stage_b >= stage_a


def test_nothing_imports_a_layer_above_it():
    upward = sorted(f"{a} → {b}" for a, targets in _graph().items() for b in targets if _reaches_up(a, b))
    assert upward == [], "imports that reach up a layer:\n" + "\n".join(upward)


def test_methods_and_tasks_do_not_know_each_other():
    across = sorted(f"{a} → {b}" for a, targets in _graph().items() for b in targets if {a.split(".")[0], b.split(".")[0]} == {"methods", "tasks"})
    assert across == [], "\n".join(across)


def _circles(graph: dict[str, set[str]]) -> set[frozenset[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: set[frozenset[str]] = set()

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                connect(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                found.add(frozenset(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return found


def test_no_import_circles():
    """Function-local imports included: a circle closed by one is still a circle."""
    circles = sorted(" ↔ ".join(sorted(c)) for c in _circles(_graph()))
    assert circles == [], "import circles:\n" + "\n".join(circles)


def test_the_scan_sees_the_imports_it_judges():
    """Guard against a scan that finds nothing: known edges of the tree must be in the graph."""
    graph = _graph()
    assert "harness.train.loop" in graph["harness.run.trial_state"] and "harness.run.trial" in graph["harness.run.trials"]
    assert "base.errors" in graph["methods.catalog"] and "methods.registry" in graph["harness.run.sweep"]
    assert "methods.builtin" in graph["methods.registry"] and "methods.method" in graph["methods.lora.model"]  # registry above the methods


def test_every_harness_module_lives_in_a_stage():
    """The tree tells the data flow: harness/ holds stage folders only, each named in STAGES."""
    loose = sorted(m for m in _modules() if m.startswith("harness.") and m.split(".")[1] not in STAGES)
    assert loose == [], f"modules outside a stage folder (add the stage to STAGES and docs/architecture.md): {loose}"
