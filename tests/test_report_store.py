"""Reports from a real MLflow store holding two configs of one method (tiny-llama runs): one row per
config, filters, the reused base reference, the sweep's summary, and a bundle whose tables, plots and
source list all come from the same runs."""

import csv
import io
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from adamole_bench.cli import app
from adamole_bench.harness.report.bundle import report_table
from adamole_bench.harness.report.plots import efficiency_points
from adamole_bench.harness.run import sweep
from adamole_bench.harness.settings.load import load_config
from adamole_bench.harness.store.tracking import Tracker

pytestmark = pytest.mark.integration  # real sweeps read back from MLflow

COMMON = [
    "run",
    "--model",
    "tiny-llama",
    "--methods",
    "lora",
    "--tasks",
    "fruit_or_color",
    "--max-steps",
    "3",
    "--limit",
    "16",
    "save_adapters=false",
]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """lora at lr 5e-4 (seed 0), then lora at lr 3e-3 (seeds 0, 1); both sweeps add the base reference."""
    root = tmp_path_factory.mktemp("two-configs")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ADAMOLE_BENCH_RUNS", str(root))
        patch.setenv("COLUMNS", "80")
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        runner = CliRunner()
        first = runner.invoke(app, [*COMMON, "train.lr=5e-4"])
        second = runner.invoke(app, [*COMMON, "--seeds", "0,1", "train.lr=3e-3"])
        assert first.exit_code == 0 and second.exit_code == 0, first.output + second.output
        yield {"root": root, "first": first.output, "second": second.output, "tracker": Tracker("adamole-bench")}


def _invoke(store, *args):
    result = CliRunner().invoke(app, [str(a) for a in args], env={"ADAMOLE_BENCH_RUNS": str(store["root"]), "COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    return result.output


def _trials(tracker):
    return tracker.client.search_runs([tracker.experiment_id], "tags.kind = 'trial' and attributes.status = 'FINISHED'")


def test_base_reference_is_planned_once_and_reused(store):
    assert "[1/2] base/fruit_or_color/seed0" in store["first"]
    assert "base/fruit_or_color/seed0 already done, skipped" in store["second"]  # seed-independent hash, seed 0
    methods = sorted(r.data.tags["method"] for r in _trials(store["tracker"]))
    assert methods == ["base", "lora", "lora", "lora"]
    config = load_config(None, ["seeds=[0, 1, 2]"], model="tiny-llama", methods=["lora"], tasks=["copa", "fruit_or_color"])
    planned = [(t.method, t.task, t.seed) for t in sweep.plan(config)]
    assert planned[:2] == [("base", "copa", 0), ("base", "fruit_or_color", 0)] and len(planned) == 2 + 6
    assert all(t.method == "lora" for t in sweep.plan(load_config(None, ["reference=false"], model="tiny-llama")))


def test_run_prints_the_sweep_table_with_n_ci_and_a_verdict(store):
    output = store["second"]
    assert "| base (zero-shot) | " in output and "; n=16 |" in output and "| lora | " in output and "n=16, 2 seeds" in output
    assert "verdict:" in output and "fruit_or_color (n=16):" in output and "eval.limit=null" in output


def test_the_sweep_parent_holds_the_summary_with_intervals(store, tmp_path):
    tracker = store["tracker"]
    sweeps = tracker.client.search_runs([tracker.experiment_id], "tags.kind = 'sweep'", order_by=["attributes.start_time DESC"])
    summary = Path(tracker.client.download_artifacts(sweeps[0].info.run_id, "tables/summary.csv", str(tmp_path)))
    records = {r["row"]: r for r in csv.DictReader(io.StringIO(summary.read_text()))}
    assert set(records) == {"base (zero-shot)", "lora"}  # this sweep's runs only: the lr 5e-4 config is not part of it
    lora = records["lora"]
    assert (lora["docs"], lora["seeds"], lora["base_row"]) == ("16", "2", "base (zero-shot)")
    assert 0 <= float(lora["ci_low"]) <= float(lora["mean"]) <= float(lora["ci_high"]) <= 1 and lora["p_vs_base"]
    assert {"tables/summary.md", "tables/summary.json"} <= {f.path for f in tracker.client.list_artifacts(sweeps[0].info.run_id, "tables")}


def test_the_ui_shows_the_comparison_on_the_sweep_run(store):
    """What the MLflow UI reads (docs/ui.md): the experiment's kind, sweeps named by what they compare,
    the table as the sweep's description, and one metric per (task, row) and statistic."""
    tracker = store["tracker"]
    experiment = tracker.client.get_experiment(tracker.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"  # not GenAI: the runs view
    assert "named by what it compares" in experiment.tags["mlflow.note.content"]
    sweeps = tracker.client.search_runs([tracker.experiment_id], "tags.kind = 'sweep'", order_by=["attributes.start_time DESC"])
    assert [r.data.tags["mlflow.runName"] for r in sweeps] == [
        "lora × fruit_or_color · tiny-llama · 2 seeds",
        "lora × fruit_or_color · tiny-llama · 1 seed",
    ]
    latest = sweeps[0]
    summary = {
        r["row"]: r
        for r in csv.DictReader(
            io.StringIO(Path(tracker.client.download_artifacts(latest.info.run_id, "tables/summary.csv", str(store["root"] / "dl"))).read_text())
        )
    }
    metrics = latest.data.metrics
    for row, name in (("lora", "lora"), ("base (zero-shot)", "base_zero-shot")):
        for statistic, column in (("acc", "mean"), ("ci_low", "ci_low"), ("ci_high", "ci_high")):
            assert metrics[f"fruit_or_color/{name}/{statistic}"] == pytest.approx(float(summary[row][column]), abs=5e-5)
        assert metrics[f"fruit_or_color/{name}/n"] == 16
    assert metrics["fruit_or_color/lora/seeds"] == 2 and metrics["fruit_or_color/base_zero-shot/seeds"] == 1
    description = latest.data.tags["mlflow.note.content"]
    assert description.startswith(
        Path(tracker.client.download_artifacts(latest.info.run_id, "tables/summary.md", str(store["root"] / "dl"))).read_text()
    )
    assert "Artifacts → tables/summary.html" in description
    assert "<table>" in Path(tracker.client.download_artifacts(latest.info.run_id, "tables/summary.html", str(store["root"] / "dl"))).read_text()


def test_sweep_names_say_what_is_compared():
    from adamole_bench.harness.store.tracking import sweep_name

    assert sweep_name(["adamole", "mole"], ["copa", "boolq"], "smollm2-135m", [0, 1, 2]) == "adamole,mole × copa,boolq · smollm2-135m · 3 seeds"
    assert (
        sweep_name(["lora"], ["copa", "boolq"], "tiny-llama", [0], mix=True, shard=(1, 2))
        == "lora × copa+boolq (mix) · tiny-llama · 1 seed · shard 1/2"
    )
    many = [f"t{i}" for i in range(19)]
    assert sweep_name(["lora"], many, "m", [0]) == "lora × t0,t1,t2… (19) · m · 1 seed"


def test_report_shows_one_row_per_config(store):
    document = json.loads(_invoke(store, "report", "--format", "json"))
    assert [r["label"] for r in document["rows"]] == ["base (zero-shot)", "lora (train.lr=0.0005)", "lora (train.lr=0.003)"]
    cells = {c["row"]: c for c in document["cells"]}
    tracker = store["tracker"]
    for run in _trials(tracker):
        if run.data.tags["method"] == "lora":
            label = f"lora (train.lr={run.data.params['train.lr']})"
            assert run.info.run_id in cells[label]["run_ids"] and cells[label]["docs"] == 16
    assert cells["lora (train.lr=0.003)"]["seeds"] == 2 and cells["lora (train.lr=0.0005)"]["seeds"] == 1
    assert all(isinstance(cells[label]["p_vs_base"], float) for label in ("lora (train.lr=0.0005)", "lora (train.lr=0.003)"))


def test_filters_on_resolved_params_and_config_hash(store):
    rows = list(csv.DictReader(io.StringIO(_invoke(store, "report", "--format", "csv", "--where", "train.lr=3e-3"))))
    assert sorted({r["row"] for r in rows}) == ["base (zero-shot)", "lora"]
    slow = next(r for r in _trials(store["tracker"]) if r.data.params.get("train.lr") == "0.0005")
    rows = list(
        csv.DictReader(io.StringIO(_invoke(store, "report", "--format", "csv", "--config-hash", slow.data.tags["config_hash"][:8], "--no-reference")))
    )
    assert [(r["row"], r["run_ids"]) for r in rows] == [("lora", slow.info.run_id)]
    compared = _invoke(store, "compare", "lora", "lora")
    assert "lora (train.lr=0.0005) vs lora (train.lr=0.003)" in compared and "16 paired docs" in compared
    bad = CliRunner().invoke(app, ["report", "--where", "train.lrr=3e-3"], env={"ADAMOLE_BENCH_RUNS": str(store["root"])})
    assert bad.exit_code == 2 and "did you mean 'train.lr'" in bad.output


def test_bundle_tables_plots_and_sources_come_from_the_same_runs(store, tmp_path):
    output = tmp_path / "bundle"
    _invoke(store, "report", "--output", output, "--format", "markdown")
    sources = set(json.loads((output / "source_runs.json").read_text())["run_ids"])
    assert sources == {r.info.run_id for r in _trials(store["tracker"])}
    document = json.loads((output / "accuracy.json").read_text())
    assert {run_id for row in document["rows"] for run_id in row["run_ids"]} == sources
    assert {run_id for cell in document["cells"] for run_id in cell["run_ids"]} == sources
    for name in ("accuracy_bars.png", "accuracy_vs_params_vs_speed.png"):
        assert (output / "plots" / name).stat().st_size > 10000
    # The efficiency plot draws each config at its own table cell, not a mean over both configs.
    table = report_table(store["tracker"])
    points = efficiency_points(table)
    assert set(points) == {"lora (train.lr=0.0005)", "lora (train.lr=0.003)"}
    for label, (_, _, cell) in points.items():
        assert cell is table.cells[(label, "fruit_or_color")]
        accuracies = [r.data.metrics["eval/acc"] for r in _trials(store["tracker"]) if r.info.run_id in cell.run_ids]
        assert cell.mean == pytest.approx(sum(accuracies) / len(accuracies)) and len(accuracies) == cell.seeds
    tracker = store["tracker"]
    report_run = tracker.client.search_runs([tracker.experiment_id], "tags.kind = 'report'")[0]
    logged = {f.path for f in tracker.client.list_artifacts(report_run.info.run_id, "report")}
    assert {"report/source_runs.json", "report/accuracy.json", "report/accuracy.csv", "report/plots"} <= logged
