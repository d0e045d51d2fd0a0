"""The repository root is the `adamole_bench` package: every sub-package must be declared."""

from pathlib import Path

import tomllib

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


def _constraints() -> dict[str, str]:
    from packaging.utils import canonicalize_name

    pins: dict[str, str] = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, pinned = line.partition("==")
            pins[canonicalize_name(name)] = pinned
    return pins


def test_the_lock_pins_every_dependency_within_its_declared_bounds():
    """constraints.txt (what `make setup` installs) and pyproject's bounds must agree, or setup fails."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = [Requirement(r) for r in project["dependencies"] + [r for extra in project["optional-dependencies"].values() for r in extra]]
    pins = _constraints()
    for requirement in declared:
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{name} is a dependency but constraints.txt does not pin it (run `make lock`)"
        assert requirement.specifier.contains(pins[name], prereleases=True), f"constraints.txt pins {name}=={pins[name]} outside {requirement}"
        upper = [spec for spec in requirement.specifier if spec.operator in ("<", "<=", "==")]
        assert upper, f"{requirement} has no upper bound: the next major release could break us unseen"
