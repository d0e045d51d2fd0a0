"""The README's Python blocks run as written, each in a fresh process (the tiny model, a private store): the
sweep API in an empty folder, and the two ways of loading a trained adapter on a real trial and export."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from adamole_bench.base.paths import package_root
from adamole_bench.tests.fault_tools import cli_env, run_cli

pytestmark = pytest.mark.integration  # a real sweep: about 15 s


def _api_snippets() -> list[str]:
    """The README's Python blocks that call the sweep API (the others need a trained run id or an export)."""
    blocks = re.findall(r"```python\n(.*?)```", (package_root() / "README.md").read_text(), flags=re.S)
    return [block for block in blocks if "adamole_bench.run(" in block]


def test_the_readme_python_api_snippet_runs_as_written(tmp_path):
    snippets = _api_snippets()
    assert snippets, "README.md has no Python block calling adamole_bench.run"
    for snippet in snippets:
        done = subprocess.run(
            [sys.executable, "-c", snippet], cwd=tmp_path, env=cli_env(tmp_path / "default-runs"), capture_output=True, text=True, timeout=600
        )
        assert done.returncode == 0, done.stdout + done.stderr
        assert "| lora |" in done.stdout and "lora: " in done.stdout
    client = MlflowClient(f"sqlite:///{Path(tmp_path, 'runs-demo', 'mlflow.db')}")
    experiment = client.get_experiment_by_name("adamole-bench")
    assert experiment is not None, "the README's run made no experiment in store="
    runs = client.search_runs([experiment.experiment_id], "tags.kind = 'trial'")
    assert {r.data.tags["method"] for r in runs} == {"base", "lora", "mole"}
    assert not (tmp_path / "default-runs").exists()  # store= was used, not the default store


def _loading_snippets() -> list[str]:
    """The README's Python blocks that load a trained adapter: from a run (`runs:/<run_id>/adapter`) or an export."""
    blocks = re.findall(r"```python\n(.*?)```", (package_root() / "README.md").read_text(), flags=re.S)
    return [block for block in blocks if "load_adapter(" in block or "from_pretrained(" in block]


def test_the_readme_loading_snippets_run_on_a_trained_and_an_exported_adapter(tmp_path):
    """The loading blocks run as written once their one placeholder, `<run_id>`, names a real trial, in the
    folder where `adamole-bench export` wrote `exported/` (the path the README uses)."""
    runs = tmp_path / "runs"
    env = cli_env(runs, MLFLOW_TRACKING_URI=f"sqlite:///{runs / 'mlflow.db'}")
    trained = run_cli(
        ["run", "--model", "tiny-llama", "--tasks", "fruit_or_color", "--methods", "mole", "--limit", "8", "--max-steps", "2", "reference=false"], env
    )
    assert trained.returncode == 0, trained.stdout + trained.stderr
    exported = run_cli(["export", "mole/fruit_or_color/0", str(tmp_path / "exported")], env)
    assert exported.returncode == 0, exported.stdout + exported.stderr
    run_id = re.search(r"from run ([0-9a-f]{32})", exported.stdout)
    assert run_id, exported.stdout
    snippets = _loading_snippets()
    assert len(snippets) == 2, "README.md's loading blocks changed: update this test"
    for snippet in snippets:
        code = snippet.replace("<run_id>", run_id.group(1))
        done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, code + done.stdout + done.stderr
