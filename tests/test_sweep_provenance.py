"""One small real sweep (tiny-llama, fruit_or_color), interrupted, crashed and resumed, shared by
the tests that prove resume/skip, provenance, determinism and MLflow-backed reporting."""

import json
import os
from pathlib import Path

import mlflow
import pytest
import torch
import yaml
from rich.console import Console
from typer.testing import CliRunner

from adamole_bench.harness.check import regression
from adamole_bench.harness.check import suite as suites
from adamole_bench.harness.run import sweep
from adamole_bench.harness.run import trials as trial_runner
from adamole_bench.harness.settings.load import load_config
from adamole_bench.harness.store.tracking import Tracker

pytestmark = pytest.mark.integration  # a real sweep, interrupted, crashed and resumed

SWEEP = {
    "model": "tiny-llama",
    "methods": ["base", "lora"],
    "tasks": ["fruit_or_color"],
    "seeds": [0, 1],
    "save_adapters": False,
    "experiment": "sweep-test",
    "train": {"max_steps": 3, "lr": 1e-2, "warmup_steps": 0},
    "eval": {"limit": 16, "batch_size": 16},
}


REAL_RUN_TRIAL = trial_runner.run_trial


def _failing_at(trial_name: str, error: BaseException):
    def run_trial(trial, *args, **kwargs):
        if trial.name == trial_name:
            raise error
        return REAL_RUN_TRIAL(trial, *args, **kwargs)

    return run_trial


def _search_runs(uri: str, **kwargs):
    """mlflow.search_runs on one store; MLflow 3 mirrors the URI into os.environ, so undo that after."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        mlflow.set_tracking_uri(uri)
        return mlflow.search_runs(**kwargs)


def _statuses(experiment: str) -> dict[str, list[str]]:
    runs = _search_runs(Tracker(experiment).uri, experiment_names=[experiment], order_by=["attributes.start_time ASC"])
    statuses: dict[str, list[str]] = {}
    for name, status in zip(runs["tags.mlflow.runName"], runs["status"]):
        statuses.setdefault(name if "/" in name else "sweep", []).append(status)
    return statuses


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """The sweep, run three times: Ctrl-C at lora/seed0, a crash at lora/seed1, then clean."""
    root = tmp_path_factory.mktemp("runs")
    config_file = root / "sweep.yaml"
    config_file.write_text(yaml.safe_dump(SWEEP))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ADAMOLE_BENCH_RUNS", str(root))
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # much faster on a shared machine, and the CPU protocol of the recorded suite
        config = load_config(config_file)
        console = Console(quiet=True)
        phases: dict[str, dict] = {}
        patch.setattr(trial_runner, "run_trial", _failing_at("lora/fruit_or_color/seed0", KeyboardInterrupt()))
        with pytest.raises(KeyboardInterrupt):
            sweep.run_sweep(config, console)
        phases["interrupted"] = _statuses(config.experiment)
        patch.setattr(trial_runner, "run_trial", _failing_at("lora/fruit_or_color/seed1", RuntimeError("simulated crash")))
        phases["crashed"] = {o.trial.name: o.status for o in sweep.run_sweep(config, console)}
        patch.setattr(trial_runner, "run_trial", REAL_RUN_TRIAL)
        phases["resumed"] = {o.trial.name: o.status for o in sweep.run_sweep(config, console)}
        yield {"root": root, "config": config, "config_file": config_file, "phases": phases, "tracker": Tracker(config.experiment)}
        torch.set_num_threads(threads)


def test_ctrl_c_keeps_finished_trials_and_marks_the_interrupted_one_failed(store):
    statuses = store["phases"]["interrupted"]
    assert statuses["base/fruit_or_color/seed0"] == ["FINISHED"]
    assert statuses["base/fruit_or_color/seed1"] == ["FINISHED"]
    assert statuses["lora/fruit_or_color/seed0"] == ["FAILED"]
    assert "lora/fruit_or_color/seed1" not in statuses  # never started
    assert statuses["sweep"] == ["FAILED"]


def test_rerun_skips_finished_retries_failed_and_survives_a_crash(store):
    assert store["phases"]["crashed"] == {
        "base/fruit_or_color/seed0": "skipped",
        "base/fruit_or_color/seed1": "skipped",
        "lora/fruit_or_color/seed0": "finished",  # failed by Ctrl-C before, retried
        "lora/fruit_or_color/seed1": "failed",
    }
    assert store["phases"]["resumed"] == {
        "base/fruit_or_color/seed0": "skipped",
        "base/fruit_or_color/seed1": "skipped",
        "lora/fruit_or_color/seed0": "skipped",
        "lora/fruit_or_color/seed1": "finished",
    }
    statuses = _statuses(store["config"].experiment)
    assert statuses["lora/fruit_or_color/seed1"] == ["FAILED", "FINISHED"]
    assert statuses["lora/fruit_or_color/seed0"] == ["FAILED", "FINISHED"]


def test_shards_partition_the_plan_deterministically(store):
    trials = sweep.plan(store["config"])
    shards = [sweep.select_shard(trials, i, 3) for i in range(3)]
    assert sorted(t.name for s in shards for t in s) == sorted(t.name for t in trials)
    assert [t.name for t in sweep.select_shard(sweep.plan(store["config"]), 1, 3)] == [t.name for t in shards[1]]
    assert {t.config_hash for t in trials if t.method == "lora"} != {t.config_hash for t in trials if t.method == "base"}


def test_provenance_is_readable_with_search_runs(store, tmp_path):
    runs = _search_runs(
        store["tracker"].uri, experiment_names=[store["config"].experiment], filter_string="tags.kind = 'trial' and attributes.status = 'FINISHED'"
    )
    assert len(runs) == 4
    run = runs.iloc[0]
    for tag in (
        "git_commit",
        "git_dirty",
        "mlflow.source.git.commit",
        "model",
        "model_source",
        "model_fingerprint",
        "precision",
        "data_fingerprint.train",
        "data_fingerprint.eval",
        "data_source",
        "protocol",
        "eval_batch_size",
        "config_hash",
        "eval_task_hash.fruit_or_color_letter",
        "cpu",
        "platform",
        "python",
        "torch_threads",
        "device",
    ):
        value = run[f"tags.{tag}"]
        assert isinstance(value, str) and value and value != "unknown", tag
    for package in ("torch", "transformers", "peft", "lm_eval", "mlflow"):
        assert run[f"tags.version.{package}"][0].isdigit()
    assert run["tags.git_dirty"] in ("true", "false")
    assert run["tags.torch_threads"] == "1"
    assert run["tags.precision"] == run["params.precision"] == "fp32"  # tiny-llama: auto resolves to fp32
    assert run["params.model"] == "tiny-llama" and run["params.eval.limit"] == "16"
    resolved = json.loads(Path(store["tracker"].client.download_artifacts(run["run_id"], "config/trial.json", str(tmp_path))).read_text())
    assert resolved["config_hash"] == run["tags.config_hash"] and resolved["seed"] == int(run["tags.seed"])


def test_same_config_and_seed_give_identical_numbers(store, tmp_path, monkeypatch):
    """Bitwise on CPU: accuracy, the whole loss curve and every lm-eval log-likelihood."""
    monkeypatch.setenv("ADAMOLE_BENCH_RUNS", str(tmp_path))
    first = store["tracker"]
    config = load_config(store["config_file"], ["methods=[lora]", "seeds=[0]", "reference=false"])
    again = Tracker(config.experiment)
    outcomes = sweep.run_sweep(config, Console(quiet=True), again)
    assert [o.status for o in outcomes] == ["finished"] and again.uri != store["tracker"].uri

    def measured(tracker):
        run = tracker.client.search_runs([tracker.experiment_id], "tags.method = 'lora' and tags.seed = '0' and attributes.status = 'FINISHED'")[0]
        losses = [m.value for m in sorted(tracker.client.get_metric_history(run.info.run_id, "train/loss"), key=lambda m: m.step)]
        samples = json.loads(
            Path(tracker.client.download_artifacts(run.info.run_id, "lm_eval/samples.json", str(tmp_path / run.info.run_id))).read_text()
        )
        return run.data.metrics["eval/acc"], losses, [s["loglikelihoods"] for s in samples]

    acc, losses, logliks = measured(first)
    assert len(losses) == 3 and len(logliks) == 16
    assert measured(again) == (acc, losses, logliks)


def test_report_reads_mlflow_and_writes_every_format(store, tmp_path):
    import matplotlib.pyplot as plt

    from adamole_bench.cli import app
    from adamole_bench.harness.report.plots import HEATMAP_ARTIFACT

    tracker = store["tracker"]
    lora_run = tracker.client.search_runs([tracker.experiment_id], "tags.method = 'lora' and tags.seed = '1' and attributes.status = 'FINISHED'")[0]
    figure = plt.figure()  # stands in for the heatmap an expert method logs
    tracker.log_figure(lora_run.info.run_id, figure, HEATMAP_ARTIFACT)
    plt.close(figure)
    output = tmp_path / "report"
    env = {"ADAMOLE_BENCH_RUNS": str(store["root"])}
    result = CliRunner().invoke(app, ["report", "--experiment", "sweep-test", "--format", "markdown", "--output", str(output)], env=env)
    assert result.exit_code == 0, result.output
    assert "| lora |" in result.output and "| base (zero-shot) |" in result.output
    assert {p.name for p in output.iterdir()} >= {"accuracy.md", "accuracy.csv", "accuracy.tex", "accuracy.html", "plots"}
    assert (output / "plots" / "accuracy_bars.png").stat().st_size > 1000
    assert (output / "plots" / "accuracy_vs_params_vs_speed.png").stat().st_size > 1000
    assert [p.name for p in (output / "plots" / "expert_usage").iterdir()] == ["lora_fruit_or_color_seed1.png"]
    reports = tracker.client.search_runs([tracker.experiment_id], "tags.kind = 'report'")
    assert len(reports) == 1
    logged = {f.path for f in tracker.client.list_artifacts(reports[0].info.run_id, "report")}
    assert "report/accuracy.tex" in logged and "report/plots" in logged

    compared = CliRunner().invoke(app, ["compare", "lora", "base", "--experiment", "sweep-test"], env=env)
    assert compared.exit_code == 0 and "2 matched (task, seed) pairs" in compared.output and "too small" in compared.output

    missing = CliRunner().invoke(app, ["report", "--experiment", "sweep-test", "--methods", "nope"], env=env)
    assert missing.exit_code == 2 and "no finished trials" in missing.output


def test_check_from_mlflow_passes_on_records_and_fails_on_a_drop(store, tmp_path):
    from adamole_bench.cli import app

    suite_file = tmp_path / "suite.yaml"
    suite_file.write_text(yaml.safe_dump({"config": os.path.relpath(store["config_file"], tmp_path), "records": []}))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ADAMOLE_BENCH_RUNS", str(store["root"]))
        suite = suites.load_suite(suite_file)
        suites.record(suite, regression.existing_rows(suite))
    recorded = yaml.safe_load(suite_file.read_text())
    assert [(r["method"], r["seeds"]) for r in recorded["records"]] == [("base", [0, 1]), ("lora", [0, 1])]

    env = {"ADAMOLE_BENCH_RUNS": str(store["root"]), "COLUMNS": "160"}
    passing = CliRunner().invoke(app, ["check", "--suite", str(suite_file), "--from-mlflow"], env=env)
    assert passing.exit_code == 0, passing.output

    recorded["records"][1]["mean"] += 0.2  # as if lora used to be 20 points better
    suite_file.write_text(yaml.safe_dump(recorded))
    failing = CliRunner().invoke(app, ["check", "--suite", str(suite_file), "--from-mlflow"], env=env)
    assert failing.exit_code == 1 and "regressed" in failing.output

    recorded["records"][1]["config_hash"] = "000000000000"  # the config changed since recording
    suite_file.write_text(yaml.safe_dump(recorded))
    stale = CliRunner().invoke(app, ["check", "--suite", str(suite_file), "--from-mlflow"], env=env)
    assert stale.exit_code == 1 and "missing" in stale.output and "new" in stale.output
