"""The repository root is the `adamole_bench` package: every sub-package must be declared."""

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_every_package_folder_is_in_pyproject():
    declared = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    folders = {
        "adamole_bench" + ("." + ".".join(p.parent.relative_to(ROOT).parts) if p.parent != ROOT else "")
        for p in ROOT.rglob("__init__.py")
        if not any(part.startswith(".") or part in ("tests", "build") for part in p.relative_to(ROOT).parts)
    }
    assert folders == declared


def test_no_top_level_tasks_methods_or_harness_packages_are_installed():
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    assert all(name == "adamole_bench" or name.startswith("adamole_bench.") for name in declared)
