"""A function-local import of our own code runs only when its function does, so a module moved or a
name renamed breaks it silently until then (scripts/measure_precision.py imported `rows_from_mlflow`
from harness/report/table.py for a while after it moved). Each one must name a module of the package
and something that module defines. Read off the source, imported nothing: importing a module out of
its usual order has side effects of its own (PEFT registration)."""

import ast
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
