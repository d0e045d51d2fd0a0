"""Comparison tables: method × task accuracy, one cell per (method, task) over its seeds.

One seed: accuracy ± lm-eval's standard error over eval items. Several seeds: mean ± sample
standard deviation over seeds (the number that says whether a method gain is real).
"""

import statistics
from dataclasses import dataclass

from rich.table import Table


@dataclass
class Cell:
    mean: float
    spread: float | None  # stderr (one seed) or sd over seeds
    seeds: int

    def text(self, scale: float = 100.0) -> str:
        spread = f" ± {self.spread * scale:.1f}" if self.spread is not None else ""
        return f"{self.mean * scale:.1f}{spread}"


@dataclass
class AccuracyTable:
    methods: list[str]
    tasks: list[str]
    cells: dict[tuple[str, str], Cell]
    metric: str = "acc"

    @property
    def spread_label(self) -> str:
        many = any(c.seeds > 1 for c in self.cells.values())
        return "mean ± sd over seeds" if many else "± stderr over eval items"


def outcome_rows(outcomes) -> list[dict]:
    rows = []
    for outcome in outcomes:
        if outcome.status in ("finished", "skipped") and "eval/acc" in outcome.metrics:
            rows.append(
                {
                    "method": outcome.trial.method,
                    "task": outcome.trial.task,
                    "seed": outcome.trial.seed,
                    "acc": outcome.metrics["eval/acc"],
                    "acc_stderr": outcome.metrics.get("eval/acc_stderr"),
                }
            )
    return rows


def accuracy_table(rows: list[dict], metric: str = "acc") -> AccuracyTable:
    methods = list(dict.fromkeys(r["method"] for r in rows))
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    cells = {}
    for method in methods:
        for task in tasks:
            values = [r for r in rows if r["method"] == method and r["task"] == task and r.get(metric) is not None]
            if not values:
                continue
            scores = [v[metric] for v in values]
            if len(scores) == 1:
                spread = values[0].get(f"{metric}_stderr")
            else:
                spread = statistics.stdev(scores)
            cells[(method, task)] = Cell(statistics.fmean(scores), spread, len(scores))
    return AccuracyTable(methods, tasks, cells, metric)


def render_rich(table: AccuracyTable) -> Table:
    rich_table = Table(title=f"{table.metric} (%), {table.spread_label}")
    rich_table.add_column("method", style="bold")
    for task in table.tasks:
        rich_table.add_column(task, justify="right")
    for method in table.methods:
        rich_table.add_row(method, *(table.cells[(method, t)].text() if (method, t) in table.cells else "–" for t in table.tasks))
    return rich_table


def render_markdown(table_or_rows) -> str:
    table = table_or_rows if isinstance(table_or_rows, AccuracyTable) else accuracy_table(table_or_rows)
    lines = [
        f"{table.metric} (%), {table.spread_label}",
        "",
        "| method | " + " | ".join(table.tasks) + " |",
        "|---|" + "---:|" * len(table.tasks),
    ]
    for method in table.methods:
        cells = (table.cells[(method, t)].text() if (method, t) in table.cells else "–" for t in table.tasks)
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def rows_from_mlflow(tracker) -> list[dict]:
    """One row per finished trial; a (config hash, seed) recorded twice counts once (the newest)."""
    runs = tracker.client.search_runs(
        [tracker.experiment_id],
        filter_string="tags.kind = 'trial' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
        max_results=50000,
    )
    rows = {}
    for run in runs:
        tags, metrics = run.data.tags, run.data.metrics
        key = (tags.get("config_hash"), tags.get("seed"))
        if key in rows or "eval/acc" not in metrics:
            continue
        rows[key] = {
            "method": tags["method"],
            "task": tags["task"],
            "seed": int(tags["seed"]),
            "model": tags.get("model"),
            "config_hash": tags.get("config_hash"),
            "acc": metrics["eval/acc"],
            "acc_stderr": metrics.get("eval/acc_stderr"),
            "run_id": run.info.run_id,
        }
    return sorted(rows.values(), key=lambda r: (r["task"], r["method"], r["seed"]))
