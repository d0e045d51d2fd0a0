"""A function-local import of our own code runs only when its function does, so a module moved or a
name renamed breaks it silently until then (scripts/measure_precision.py imported `rows_from_mlflow`
from harness/report/table.py for a while after it moved). Each one must name a module of the package
and something that module defines. Read off the source, imported nothing: importing a module out of
its usual order has side effects of its own (PEFT registration)."""

import ast
import re
from pathlib import Path

from adamole_bench.base.paths import package_root

ROOT = package_root()
SKIPPED = (".venv", "build")


def _local_imports(path: Path) -> list[tuple[list[str], str, int]]:
    """(module path parts, name, line) of each `from <our module> import name` inside a function of `path`."""
    package = list(path.relative_to(ROOT).parts[:-1])
    found = []
    for function in ast.walk(ast.parse(path.read_text())):
        if not isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        for node in ast.walk(function):
            if not isinstance(node, ast.ImportFrom):
                continue
            if node.level:
                module = package[: len(package) - (node.level - 1)] + (node.module.split(".") if node.module else [])
            elif node.module and node.module.split(".")[0] == "adamole_bench":
                module = node.module.split(".")[1:]
            else:
                continue
            found += [(module, alias.name, node.lineno) for alias in node.names]
    return found


def _top_level_names(tree: ast.Module) -> set[str]:
    """What a module defines or imports at its top level (inside `if`/`try` blocks too)."""
    names, pending = set(), list(tree.body)
    while pending:
        node = pending.pop()
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Import | ast.ImportFrom):
            names |= {(alias.asname or alias.name).split(".")[0] for alias in node.names}
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {n.id for target in targets for n in ast.walk(target) if isinstance(n, ast.Name)}
        elif isinstance(node, ast.If | ast.Try):
            pending += [*node.body, *node.orelse, *getattr(node, "finalbody", []), *(s for h in getattr(node, "handlers", []) for s in h.body)]
    return names


def _resolves(module: list[str], name: str) -> bool:
    folder = ROOT.joinpath(*module)
    if (folder / name).is_dir() or (folder / f"{name}.py").is_file():  # a submodule
        return True
    source = folder / "__init__.py" if folder.is_dir() else folder.with_suffix(".py")
    return source.is_file() and name in _top_level_names(ast.parse(source.read_text()))


def test_every_function_local_import_of_our_code_resolves():
    files = [p for p in ROOT.rglob("*.py") if not any(part in SKIPPED or part.startswith(".") for part in p.relative_to(ROOT).parts)]
    found = [(path, *entry) for path in files for entry in _local_imports(path)]
    assert len(found) > 50, len(found)  # the walk does find the package's lazy imports
    broken = [
        f"{path.relative_to(ROOT)}:{line}: {'.'.join(module)} has no {name}" for path, module, name, line in found if not _resolves(module, name)
    ]
    assert broken == [], "\n".join(broken)


# A module that defers a dependency everywhere says so once, at the top: `# Imported where used: mlflow,
# transformers (why)`. Any other function-local import carries its reason on its line or the line above.
DEFERRED = re.compile(r"^# Imported where used: ([\w.]+(?:, [\w.]+)*)[ (—:]", re.MULTILINE)
# Modules whose docstring gives the reason for all of their function-local imports.
EXPLAINED_BY_DOCSTRING = {
    "cli.py": "each command imports its own stage: --help and a bad flag's error must not wait for torch",
    "harness/run/ray_worker.py": "nothing beyond the standard library at its top: Ray imports it before the driver's variables are set",
}


def _unexplained_local_imports(path: Path, root: Path = ROOT) -> list[str]:
    source = path.read_text()
    lines = source.splitlines()
    declared = {name for match in DEFERRED.finditer(source) for name in match.group(1).split(", ")}
    found = []
    for function in ast.walk(ast.parse(source)):
        if not isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        for node in ast.walk(function):
            if not isinstance(node, ast.Import | ast.ImportFrom):
                continue
            modules = [alias.name for alias in node.names] if isinstance(node, ast.Import) else ["." * node.level + (node.module or "")]
            if all(module.split(".")[0] in declared for module in modules if not module.startswith(".")) and not any(
                m.startswith(".") for m in modules
            ):
                continue
            line, above = lines[node.lineno - 1], lines[node.lineno - 2].strip() if node.lineno > 1 else ""
            if "#" not in line and not above.startswith("#"):
                found.append(f"{path.relative_to(root)}:{node.lineno}: {line.strip()}")
    return sorted(set(found))


def test_every_function_local_import_says_why_it_is_not_at_the_top():
    """Only optional or slow-to-import dependencies are imported inside functions, each with its reason
    (issue 26): an unexplained one is either cheap and belongs at the top, or needs its reason written."""
    files = [p for p in ROOT.rglob("*.py") if not any(part in (*SKIPPED, "tests") or part.startswith(".") for part in p.relative_to(ROOT).parts)]
    files = [p for p in files if str(p.relative_to(ROOT)) not in EXPLAINED_BY_DOCSTRING]
    unexplained = [entry for path in files for entry in _unexplained_local_imports(path)]
    assert unexplained == [], "hoist these to the top of their module, or give the reason on the line:\n" + "\n".join(unexplained)


def test_the_reason_rule_can_fail(tmp_path):
    """The scan flags an unexplained local import and accepts the two ways of explaining one."""
    module = tmp_path / "probe.py"
    module.write_text(
        "# Imported where used: mlflow (slow)\n\ndef f():\n    import json\n    import mlflow\n    # why\n    import csv\n    import re  # why\n    from .x import y\n"
    )
    assert _unexplained_local_imports(module, tmp_path) == ["probe.py:4: import json", "probe.py:9: from .x import y"]
