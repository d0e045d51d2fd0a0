"""`adamole-bench report --output DIR`: every table format, the plots and the expert heatmaps in
one folder, also logged to MLflow as a `kind=report` run so a report stays next to its runs."""

import time
from pathlib import Path

from .plots import accuracy_bars, collect_heatmaps, efficiency
from .provenance import code_version
from .report import SUFFIXES, TEXT_RENDERERS, AccuracyTable


def write_report(tracker, rows: list[dict], table: AccuracyTable, output: Path, filters: dict[str, str]) -> list[Path]:
    output.mkdir(parents=True, exist_ok=True)
    written = []
    for name, render in TEXT_RENDERERS.items():
        path = output / f"accuracy.{SUFFIXES[name]}"
        path.write_text(render(table))
        written.append(path)
    written.append(accuracy_bars(table, output / "plots" / "accuracy_bars.png"))
    pareto = efficiency(rows, output / "plots" / "accuracy_vs_params_vs_speed.png")
    written += [pareto] if pareto else []
    written += collect_heatmaps(tracker, rows, output / "plots" / "expert_usage")
    tags = {"kind": "report", **{f"filter.{k}": v for k, v in filters.items() if v}, **code_version()}
    with tracker.run(f"report {time.strftime('%Y-%m-%d %H:%M:%S')}", tags) as run_id:
        tracker.log_metrics(run_id, {"report/trials": len(rows)})
        tracker.log_dict(run_id, {"run_ids": [r["run_id"] for r in rows]}, "report/source_runs.json")
        tracker.log_artifacts(run_id, output, "report")
    return written
