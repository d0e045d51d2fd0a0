"""The README's Python API snippet runs as written, in a fresh process in an empty folder (the tiny model,
its own store), and its trials are in that store afterwards."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from adamole_bench.base.paths import package_root
from adamole_bench.tests.fault_tools import cli_env

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
    runs = client.search_runs([client.get_experiment_by_name("adamole-bench").experiment_id], "tags.kind = 'trial'")
    assert {r.data.tags["method"] for r in runs} == {"base", "lora", "mole"}
    assert not (tmp_path / "default-runs").exists()  # store= was used, not the default store
