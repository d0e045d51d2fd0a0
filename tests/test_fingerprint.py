"""A trial's identity holds the code and packages that compute its number: an edit of one method reruns that
method only, a comment does not, an upgraded package reruns everything; report keeps old and new apart."""

import ast
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from adamole_bench.base.machine import numerics_class
from adamole_bench.base.paths import package_root
from adamole_bench.harness.check.regression import Suite, compare, provenance_lines
from adamole_bench.harness.store import fingerprint
from adamole_bench.tests.fault_tools import TINY

SWEEP = ["run", *TINY, "--max-steps", "2"]


def test_comments_docstrings_and_layout_do_not_count_but_code_does(tmp_path):
    def digest_of(name: str, text: str) -> str:
        (tmp_path / name).write_text(text)
        return fingerprint.digest([tmp_path / name], tmp_path)

    plain = digest_of("a.py", "def f(x):\n    return x + 1\n")
    assert digest_of("a.py", '"""Module."""\n# a comment\ndef f(x):\n    """Adds one."""\n    return (x +\n            1)  # trailing\n') == plain
    assert digest_of("a.py", "def f(x):\n    return x + 2\n") != plain
    assert digest_of("b.py", "def f(x):\n    return x + 1\n") != plain  # a file moved is a change too
    config = digest_of("t.yaml", "metric: acc\nchoices: [A, B]\n")
    assert digest_of("t.yaml", "# protocol\nchoices:\n  - A\n  - B\nmetric: acc   # the metric\n") == config
    assert digest_of("t.yaml", "metric: acc\nchoices: [A, C]\n") != config


def _package_imports(module: Path, root: Path) -> set[Path]:
    """The package's own modules that `module` imports (relative imports), as files."""
    found = set()
    for node in ast.walk(ast.parse(module.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = module.parent
            for _ in range(node.level - 1):
                base = base.parent
            target = base.joinpath(*(node.module or "").split(".")) if node.module else base
            names = [target / f"{alias.name}.py" for alias in node.names] + [target.with_suffix(".py"), target / "__init__.py"]
            found |= {path for path in names if path.is_file() and root in path.parents}
    return found


def test_every_module_a_trial_imports_is_either_on_the_result_path_or_listed_as_not():
    """A new module on the trial path must be placed in one list: otherwise its edits would silently reuse results."""
    root = package_root()
    seen, todo = set(), [root / "harness" / "run" / "trials.py"]
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo += _package_imports(module, root)
    hashed = set(fingerprint.result_path_files())
    placed = hashed | {root / name for name in fingerprint.NOT_RESULT_PATH}
    method_folders = [p for p in (root / "methods").iterdir() if p.is_dir() and (p / "__init__.py").exists()]  # in code.method
    unplaced = sorted(str(p.relative_to(root)) for p in seen - placed if p.name != "__init__.py" and not any(f in p.parents for f in method_folders))
    assert unplaced == [], f"add these to RESULT_PATH or NOT_RESULT_PATH in harness/store/fingerprint.py: {unplaced}"
    assert {root / "harness" / "train" / "loop.py", root / "harness" / "evaluate" / "scoring.py", root / "tasks" / "copa.yaml"} <= hashed


def test_check_says_which_code_its_records_came_from():
    current = fingerprint.implementation("lora")
    old = {**current, "code.method": "0123456789ab"}
    record = {
        "model": "tiny-llama",
        "method": "lora",
        "task": "fruit_or_color",
        "protocol": "letter",
        "config_hash": "abc",
        "seeds": [0],
        "values": [1.0],
        "mean": 1.0,
        "cpu": numerics_class(),
    }
    row = {**{k: record[k] for k in ("model", "method", "task", "protocol", "config_hash")}, "seed": 0, "acc": 1.0}
    suite = Suite(Path("suite.yaml"), Path("exp.yaml"), records=[{**record, "implementation": old}, {**record, "task": "other"}],
                  recorded={numerics_class(): {"at": "2026-12-01", "git_commit": "c3bac7f4", "versions": {"torch": "2.13.0"}}})  # fmt: skip
    deltas = compare(suite, [row, {**row, "task": "other"}])
    assert deltas[0].status == "ok" and deltas[0].code_changes == [f"code.method 0123456789ab→{current['code.method']}"]
    lines = provenance_lines(suite, deltas)
    assert lines[0].startswith(f"recorded numbers ({numerics_class()}): 2026-12-01, git c3bac7f4, torch 2.13.0")
    assert any("lora / fruit_or_color: installed code differs" in line and "code.method" in line for line in lines)
    assert any("lora / other: recorded without a code fingerprint" in line for line in lines)


# --- end to end: real `adamole-bench` processes on a copy of the package ----------------------------


def _copy_package(target: Path) -> Path:
    """The checkout as an importable `adamole_bench` under `target` (put `target` first on PYTHONPATH)."""
    ignore = shutil.ignore_patterns(".venv", ".git", "runs", "__pycache__", "tests", "*.egg-info", ".ruff_cache", ".mypy_cache")
    shutil.copytree(package_root(), target / "adamole_bench", ignore=ignore)
    return target / "adamole_bench"


def _run(args: list[str], runs: Path, pythonpath: Path | None = None) -> str:
    env = {**os.environ, "ADAMOLE_BENCH_RUNS": str(runs), "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    env.pop("MLFLOW_TRACKING_URI", None)
    if pythonpath:  # first, before whatever made this checkout importable
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(pythonpath), os.environ.get("PYTHONPATH")]))
    done = subprocess.run([sys.executable, "-m", "adamole_bench.cli", *args], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert text.count(old) == 1, f"{old!r} not found once in {path}"
    path.write_text(text.replace(old, new))


@pytest.fixture(scope="module")
def edited(tmp_path_factory):
    """A sweep of lora and mole; then, from copies of the package: a comment-only edit of mole, a one-line
    edit of mole's forward path, and the same code under a newer peft (its installed metadata)."""
    base = tmp_path_factory.mktemp("fingerprint")
    runs = base / "runs"
    first = _run([*SWEEP, "--methods", "lora,mole"], runs)

    commented = _copy_package(base / "commented")
    _edit(commented / "methods" / "mole" / "model.py", "    def make_router(self, in_features: int) -> GateRouter:\n",
          '    def make_router(self, in_features: int) -> GateRouter:\n        """Softmax gate, top-k or threshold."""  # a docstring\n')  # fmt: skip
    after_comment = _run([*SWEEP, "--methods", "lora,mole"], runs, base / "commented")

    fixed = _copy_package(base / "fixed")
    _edit(fixed / "methods" / "mole" / "model.py", "k=cfg.top_k)", "k=int(cfg.top_k))")
    after_fix = _run([*SWEEP, "--methods", "lora,mole"], runs, base / "fixed")
    report_all = _run(["report", "--format", "json"], runs, base / "fixed")
    report_current = _run(["report", "--format", "json", "--current-code"], runs, base / "fixed")

    upgraded = base / "upgraded"
    (upgraded / "peft-99.0.0.dist-info").mkdir(parents=True)
    (upgraded / "peft-99.0.0.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: peft\nVersion: 99.0.0\n")
    after_upgrade = _run([*SWEEP, "--methods", "lora"], runs, upgraded)
    return {
        "first": first,
        "comment": after_comment,
        "fix": after_fix,
        "report": json.loads(report_all),
        "current": json.loads(report_current),
        "upgrade": after_upgrade,
    }


def _skipped(output: str) -> set[str]:
    return {line.split()[1].split("/")[0] for line in output.splitlines() if "already done, skipped" in line}


def _rerun(output: str) -> dict[str, str]:
    return {line.split()[1].split("/")[0]: line for line in output.splitlines() if "from other code or packages" in line}


@pytest.mark.integration
def test_a_comment_or_docstring_edit_reuses_every_result(edited):
    assert _skipped(edited["first"]) == set()
    assert _skipped(edited["comment"]) == {"base", "lora", "mole"} and _rerun(edited["comment"]) == {}


@pytest.mark.integration
def test_a_one_line_edit_of_a_method_reruns_that_method_only_and_says_so(edited):
    assert _skipped(edited["fix"]) == {"base", "lora"}
    line = _rerun(edited["fix"])["mole"]
    assert "code.method" in line and "code.shared" not in line and "rerunning" in line


@pytest.mark.integration
def test_report_keeps_old_and_new_code_apart_labelled_by_what_differs_and_can_show_only_the_current(edited):
    moles = [row for row in edited["report"]["rows"] if row["method"] == "mole"]
    assert len(moles) == 2 and len({row["variant"] for row in moles}) == 2
    assert all("code.method=" in row["label"] for row in moles)
    assert {row["implementation"]["code.method"] for row in moles} == {row["label"].split("code.method=")[1].split(",")[0] for row in moles}
    current = [row for row in edited["current"]["rows"] if row["method"] == "mole"]
    assert len(current) == 1 and current[0]["label"] == "mole"
    assert current[0]["implementation"]["code.method"] == _rerun(edited["fix"])["mole"].split("→")[1].split(")")[0]


@pytest.mark.integration
def test_an_upgraded_package_reruns_everything_it_computes(edited):
    assert _skipped(edited["upgrade"]) == set()
    assert set(_rerun(edited["upgrade"])) == {"base", "lora"}
    assert all("release.peft" in line and "99.0.0" in line for line in _rerun(edited["upgrade"]).values())
