"""Make `import adamole_bench` resolve to this checkout, installed or not.

The repository root is the package (see pyproject's package-dir), so a plain checkout
has no `adamole_bench/` folder on sys.path; register the root under that name.
"""

import importlib.util
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location("adamole_bench", os.path.join(_root, "__init__.py"), submodule_search_locations=[_root])
assert _spec is not None and _spec.loader is not None
_module = importlib.util.module_from_spec(_spec)
sys.modules["adamole_bench"] = _module
_spec.loader.exec_module(_module)

import pytest  # noqa: E402


@pytest.fixture
def runs_dir(tmp_path, monkeypatch):
    """A private MLflow store for one test (never the user's ./runs or MLFLOW_TRACKING_URI)."""
    monkeypatch.setenv("ADAMOLE_BENCH_RUNS", str(tmp_path / "runs"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path / "runs"


@pytest.fixture
def cli():
    """Invoke `adamole-bench ...` in-process; returns typer's Result (exit_code, output)."""
    from typer.testing import CliRunner

    from adamole_bench.cli import app

    return lambda *args: CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture
def search_runs(runs_dir):
    """mlflow.search_runs over the test's store, filtered by the `kind` tag (trial|sweep|...)."""
    import mlflow

    def search(kind: str = "trial"):
        mlflow.set_tracking_uri(f"sqlite:///{runs_dir / 'mlflow.db'}")
        return mlflow.search_runs(experiment_names=["adamole-bench"], filter_string=f"tags.kind = '{kind}'")

    return search
