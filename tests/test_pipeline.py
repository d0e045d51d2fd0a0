"""End to end, as a user runs it: CLI → train → lm-eval → MLflow → table, on the tiny model."""

import json
from pathlib import Path

import mlflow
import pytest

pytestmark = pytest.mark.integration  # real sweeps on the tiny model, read back from MLflow

TINY = ("--model", "tiny-llama")
LEARN = ("--max-steps", "150", "train.lr=3e-3", "train.batch_size=16", "lora.rank=8")


@pytest.fixture(scope="module")
def shared_store(tmp_path_factory):
    """One learnable sweep shared by the read-back tests of this module (it is the slow part)."""
    with pytest.MonkeyPatch.context() as patch:
        runs = tmp_path_factory.mktemp("shared") / "runs"
        patch.setenv("ADAMOLE_BENCH_RUNS", str(runs))
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        from typer.testing import CliRunner

        from adamole_bench.cli import app

        result = CliRunner().invoke(app, ["run", *TINY, "--methods", "base,lora", "--tasks", "fruit_or_color", *LEARN])
        assert result.exit_code == 0, result.output
        yield runs, result


@pytest.fixture
def finished_sweep(shared_store, monkeypatch):
    runs, result = shared_store
    monkeypatch.setenv("ADAMOLE_BENCH_RUNS", str(runs))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return result


@pytest.fixture
def search_runs(shared_store):
    runs, _ = shared_store

    def search(kind: str = "trial"):
        mlflow.set_tracking_uri(f"sqlite:///{runs / 'mlflow.db'}")
        return mlflow.search_runs(experiment_names=["adamole-bench"], filter_string=f"tags.kind = '{kind}'")

    return search


def test_training_learns_a_learnable_task_and_everything_reads_back(finished_sweep, search_runs):
    trials = search_runs("trial").set_index("tags.method")
    assert set(trials.index) == {"base", "lora"}
    assert (trials["status"] == "FINISHED").all()
    # Learning: the untrained base model is at chance, LoRA training lifts it above 0.9.
    assert trials.loc["base", "metrics.eval/acc"] < 0.7
    assert trials.loc["lora", "metrics.eval/acc"] > 0.9
    lora = trials.loc["lora"]
    # Params (flattened, chunked), metrics, tags and provenance.
    assert lora["params.method_config.rank"] == "8"
    assert lora["params.train.lr"] == "0.003"
    assert lora["metrics.params/trainable"] == 4 * 2 * (8 * 64 + 64 * 8)  # 4 targets × 2 layers
    assert lora["metrics.train/tokens_per_second"] > 0
    assert lora["metrics.eval/docs"] == 128
    for tag in ("tags.config_hash", "tags.git_commit", "tags.data_fingerprint.eval", "tags.model_fingerprint", "tags.version.torch"):
        assert lora[tag], tag
    assert lora["tags.protocol"] == "letter"
    client = mlflow.MlflowClient()
    losses = [m.value for m in client.get_metric_history(lora["run_id"], "train/loss")]
    assert len(losses) == 150 and losses[-1] < losses[0] / 5
    # Artifacts: resolved config, lm-eval results, per-sample predictions, the adapter (PEFT format).
    artifacts = {a.path for a in client.list_artifacts(lora["run_id"])}
    assert {"config", "lm_eval", "adapter"} <= artifacts
    results = json.loads(Path(mlflow.artifacts.download_artifacts(run_id=lora["run_id"], artifact_path="lm_eval/results.json")).read_text())
    assert results["results"]["fruit_or_color_letter"]["acc,none"] == pytest.approx(lora["metrics.eval/acc"])
    assert results["git_hash"] == lora["tags.git_commit"]  # our code version, not the cwd's repo
    adapter_files = {a.path for a in client.list_artifacts(lora["run_id"], "adapter")}
    assert "adapter/adapter_model.safetensors" in adapter_files
    # One parent run per invocation, every trial its child.
    sweep = search_runs("sweep")
    assert len(sweep) == 1 and (trials["tags.mlflow.parentRunId"] == sweep["run_id"][0]).all()


def test_table_is_printed_in_terminal_and_markdown(finished_sweep):
    assert "| method | fruit_or_color |" in finished_sweep.output
    assert "| lora |" in finished_sweep.output


def test_rerun_skips_finished_trials(finished_sweep, cli, search_runs):
    again = cli("run", *TINY, "--methods", "base,lora", "--tasks", "fruit_or_color", *LEARN)
    assert again.exit_code == 0, again.output
    assert again.output.count("already done, skipped") == 2
    assert len(search_runs("trial")) == 2  # nothing re-run, table still printed from the records
    assert "| lora |" in again.output


def test_crash_marks_run_failed_and_sweep_continues(cli, runs_dir, monkeypatch):
    from adamole_bench.harness.run import trial_state

    real_train = trial_state.train

    def train_or_crash(model, method, *args, **kwargs):
        if method.name == "lora":
            raise RuntimeError("simulated crash")
        return real_train(model, method, *args, **kwargs)

    monkeypatch.setattr(trial_state, "train", train_or_crash)
    result = cli("run", *TINY, "--methods", "lora,base", "--tasks", "fruit_or_color", "--max-steps", "2")
    assert result.exit_code == 1
    assert "simulated crash" in result.output
    mlflow.set_tracking_uri(f"sqlite:///{runs_dir / 'mlflow.db'}")
    status = mlflow.search_runs(experiment_names=["adamole-bench"], filter_string="tags.kind = 'trial'").set_index("tags.method")["status"]
    assert status["lora"] == "FAILED" and status["base"] == "FINISHED"


def test_same_seed_and_config_give_identical_metrics(cli, tmp_path, monkeypatch):
    metrics = []
    for attempt in ("a", "b"):
        monkeypatch.setenv("ADAMOLE_BENCH_RUNS", str(tmp_path / attempt))
        monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
        result = cli("run", *TINY, "--methods", "lora", "--tasks", "fruit_or_color", "--max-steps", "5", "--seeds", "3", "reference=false")
        assert result.exit_code == 0, result.output
        mlflow.set_tracking_uri(f"sqlite:///{tmp_path / attempt / 'mlflow.db'}")
        run = mlflow.search_runs(experiment_names=["adamole-bench"], filter_string="tags.kind = 'trial'").iloc[0]
        history = [m.value for m in mlflow.MlflowClient().get_metric_history(run["run_id"], "train/loss")]
        metrics.append((run["metrics.eval/acc"], history))
    assert metrics[0] == metrics[1]
