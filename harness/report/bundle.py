"""From the MLflow store to a table, and from a table to files: `report` and `compare` read
`report_table`, `run` prints `sweep_table`, and `report --output DIR` writes every table format,
the plots, the expert heatmaps and the source list of one table into one folder (also logged to
MLflow as a `kind=report` run). Everything in a bundle comes from the same runs: the table's."""

import json
import re
import time
from pathlib import Path

from ...base.errors import UserError
from ..store.provenance import code_version
from .plots import accuracy_bars, collect_heatmaps, efficiency
from .render import SUFFIXES, TEXT_RENDERERS
from .results import check_single_model, group_variants, load_published, rows_from_mlflow, samples_loader, select_rows
from .stats import wilson_interval
from .table import AccuracyTable, build_table
from .ui import TRIALS_TAG


def report_table(
    tracker,
    model=None,
    methods=None,
    tasks=None,
    config_hashes=None,
    where=None,
    reference=True,
    published: Path | None = None,
    current: bool = False,
) -> AccuracyTable:
    """The finished trials matching the filters, one row per (method, config, implementation), base reference
    added; `current`: only what the installed code computed; `published` (results/published.yaml) adds the
    paper numbers of the same model as extra rows."""
    rows = rows_from_mlflow(tracker, model=model, tasks=tasks)
    check_single_model(rows)
    rows = select_rows(rows, methods=methods, config_hashes=config_hashes, where=where, reference=reference, current=current)
    if not rows:
        raise UserError(
            f"no finished trials in experiment '{tracker.client.get_experiment(tracker.experiment_id).name}' match the filters; run `adamole-bench run` first"
        )
    model = rows[0]["model"]
    numbers = {k: v for k, v in (load_published(published, model) if published else {}).items() if k[1] in {r["task"] for r in rows}}
    return build_table(group_variants(rows, order=methods), samples_loader(tracker), published=numbers, model=model)


def sweep_table(tracker, config, outcomes) -> AccuracyTable | None:
    """The table of one sweep: exactly its finished and skipped trials (the implicit base included)."""
    keys = {
        (o.trial.config_hash, o.trial.implementation.get("implementation"), o.trial.seed) for o in outcomes if o.status in ("finished", "skipped")
    }
    if not keys:
        return None
    rows = rows_from_mlflow(tracker, model=config.model, tasks=config.tasks)
    rows = [r for r in rows if (r["config_hash"], r["implementation"].get("implementation"), r["seed"]) in keys]
    if not rows:
        return None
    return build_table(group_variants(rows, order=config.methods), samples_loader(tracker), tasks=config.tasks, model=config.model)


def summary_metrics(table: AccuracyTable) -> dict[str, float]:
    """Per (column, row) of a table, MLflow metrics a run page lists together: `copa/lora/acc`,
    `copa/lora/ci_low`, `copa/lora/ci_high` (fractions like the trials' eval/acc, to 4 places; the
    CSV/JSON tables keep every digit), `copa/lora/n` (eval docs) and `copa/lora/seeds`. A row is named
    by its label made metric-safe, e.g. `lora_train.lr_0.003` for the row `lora (train.lr=0.003)`."""
    metrics = {}
    for (label, column), cell in table.cells.items():
        prefix = f"{column}/{re.sub(r'[^A-Za-z0-9_.-]+', '_', label).strip('_')}"
        metrics[f"{prefix}/{table.metric}"] = round(cell.mean, 4)
        if cell.low is not None and cell.high is not None:
            metrics[f"{prefix}/ci_low"], metrics[f"{prefix}/ci_high"] = round(cell.low, 4), round(cell.high, 4)
        if cell.docs:
            metrics[f"{prefix}/n"] = cell.docs
        metrics[f"{prefix}/seeds"] = cell.seeds
    return metrics


def trial_intervals(table: AccuracyTable) -> dict[str, dict[str, float]]:
    """Each trial's own 95% interval (Wilson over its docs) as `eval/acc_ci_low|high`, so the MLflow
    compare page of a sweep's trials shows it beside `eval/acc`, where a table cell pools seeds."""
    metrics = {}
    for variant in table.variants:
        for runs in variant.runs.values():
            for run in runs:
                if run.get("docs"):
                    low, high = wilson_interval(run["acc"], run["docs"])
                    metrics[run["run_id"]] = {f"eval/{table.metric}_ci_low": round(low, 4), f"eval/{table.metric}_ci_high": round(high, 4)}
    return metrics


DESCRIPTION_LIMIT = 5000  # characters of a tag value every MLflow server accepts (tracking.py truncates there)


def _description(table: AccuracyTable, artifact: str) -> str:
    """A run's description: the Markdown table and verdict, or as much of it as a tag holds, and where
    the full table is (`artifact` without its suffix)."""
    pointer = f"Full table with p-values: Artifacts → {artifact}.html (or .md, .csv, .json)."
    full = TEXT_RENDERERS["markdown"](table)
    if len(full) + len(pointer) + 2 <= DESCRIPTION_LIMIT:
        return f"{full}\n{pointer}"
    grid = full.split("\n\n[low, high]")[0]  # the table without its legend and verdict
    return f"{grid}\n\n{pointer}" if len(grid) + len(pointer) + 2 <= DESCRIPTION_LIMIT else f"The table is too large for a description. {pointer}"


def log_sweep_summary(tracker, sweep_id: str, config, outcomes, console) -> None:
    """The comparison on the sweep's parent run, where the MLflow UI shows it: the table `run` prints as
    the run's description (rendered Markdown on its page), as tables/summary.{md,html,csv,json}, and
    as summary metrics (`summary_metrics`); each trial gets its own interval and the sweep the list of
    its trials (TRIALS_TAG), where `adamole-bench ui` finds what its link compares."""
    try:
        table = sweep_table(tracker, config, outcomes)
        if table is None:
            return
        for name in ("markdown", "html", "csv", "json"):
            tracker.log_text(sweep_id, TEXT_RENDERERS[name](table), f"tables/summary.{SUFFIXES[name]}")
        tracker.log_metrics(sweep_id, summary_metrics(table))
        for run_id, metrics in trial_intervals(table).items():
            tracker.log_metrics(run_id, metrics)
        tags = {"mlflow.note.content": _description(table, "tables/summary")}
        trials = json.dumps(list(dict.fromkeys(table.run_ids())))
        if len(trials) <= DESCRIPTION_LIMIT:  # about 150 trials; `ui` links a larger sweep's own page instead
            tags[TRIALS_TAG] = trials
        tracker.set_tags(sweep_id, tags)
    except Exception as err:  # noqa: BLE001 - every trial is already recorded; a summary that fails must not fail the sweep
        console.print(f"[yellow]warning:[/] sweep summary not logged ({type(err).__name__}: {err}); `adamole-bench report` rebuilds it")


def check_output_folder(output: Path) -> None:
    """`report --output DIR` needs a folder it can create or fill: checked before the table is built."""
    for path in (output, *output.parents):
        if path.exists():
            if not path.is_dir():
                what = "" if path == output else f" (its parent {path} is a file)"
                raise UserError(f"--output {output} is not a folder{what}; pass a new or existing folder, e.g. --output report/")
            return


def write_report(tracker, table: AccuracyTable, output: Path, filters: dict[str, str]) -> list[Path]:
    output.mkdir(parents=True, exist_ok=True)
    written = []
    for name, render in TEXT_RENDERERS.items():
        path = output / f"accuracy.{SUFFIXES[name]}"
        path.write_text(render(table))
        written.append(path)
    written += accuracy_bars(table, output / "plots" / "accuracy_bars.png")
    written += efficiency(table, output / "plots" / "accuracy_vs_params_vs_speed.png")
    written += collect_heatmaps(tracker, table, output / "plots" / "expert_usage")
    sources = output / "source_runs.json"
    sources.write_text(json.dumps({"run_ids": table.run_ids()}, indent=1) + "\n")
    written.append(sources)
    tags = {"kind": "report", **{f"filter.{k}": v for k, v in filters.items() if v}, **code_version()}
    with tracker.run(f"report {time.strftime('%Y-%m-%d %H:%M:%S')}", tags) as run_id:
        tracker.log_metrics(run_id, {"report/trials": len(table.run_ids()), **summary_metrics(table)})
        tracker.set_tags(run_id, {"mlflow.note.content": _description(table, "report/accuracy")})
        tracker.log_artifacts(run_id, output, "report")
    return written
