"""Comparison tables: method × task accuracy, one cell per (method, task) over its seeds.

One seed: accuracy ± lm-eval's standard error over eval items. Several seeds: mean ± sample
standard deviation over seeds (the number that says whether a method gain is real). The
`average` column averages each seed's accuracy over the tasks, then takes mean ± sd over seeds,
so it only exists for methods that have every task for the same seeds.
"""

import csv
import html
import io
import statistics
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from rich.table import Table

from .errors import UserError

AVERAGE = "average"
FORMATS = ("rich", "markdown", "csv", "latex", "html")


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
    cells: dict[tuple[str, str], Cell]  # (method, task or AVERAGE) → cell
    metric: str = "acc"
    published: dict[tuple[str, str], float] = field(default_factory=dict)  # (method, task) → paper number

    @property
    def columns(self) -> list[str]:
        has_average = len(self.tasks) > 1 and any((m, AVERAGE) in self.cells for m in self.methods)
        return self.tasks + ([AVERAGE] if has_average else [])

    @property
    def spread_label(self) -> str:
        many = any(c.seeds > 1 for c in self.cells.values())
        return "mean ± sd over seeds" if many else "± stderr over eval items"

    @property
    def title(self) -> str:
        return f"{self.metric} (%), {self.spread_label}; best per column in bold"

    def best(self, column: str) -> set[str]:
        """Methods with the highest mean in a column (ties all count; measured rows only)."""
        means = {m: self.cells[(m, column)].mean for m in self.methods if (m, column) in self.cells}
        top = max(means.values(), default=None)
        return {m for m, v in means.items() if v == top} if len(means) > 1 else set()

    def rows(self) -> list[tuple[str, list[tuple[str, bool]]]]:
        """(row label, [(cell text, is best)]) for measured rows, then one row per published method."""
        rows = []
        best = {column: self.best(column) for column in self.columns}
        for method in self.methods:
            texts = [(self.cells[(method, c)].text(), method in best[c]) if (method, c) in self.cells else ("–", False) for c in self.columns]
            rows.append((method, texts))
        for method in dict.fromkeys(m for m, _ in self.published):
            texts = [(f"{self.published[(method, c)] * 100:.1f}", False) if (method, c) in self.published else ("–", False) for c in self.columns]
            rows.append((f"{method} (published)", texts))
        return rows


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


def accuracy_table(rows: list[dict], metric: str = "acc", published: dict | None = None) -> AccuracyTable:
    methods = list(dict.fromkeys(r["method"] for r in rows))
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    cells = {}
    for method in methods:
        by_task = {t: {r["seed"]: r for r in rows if r["method"] == method and r["task"] == t and r.get(metric) is not None} for t in tasks}
        for task, values in by_task.items():
            if not values:
                continue
            scores = [v[metric] for v in values.values()]
            spread = next(iter(values.values())).get(f"{metric}_stderr") if len(scores) == 1 else statistics.stdev(scores)
            cells[(method, task)] = Cell(statistics.fmean(scores), spread, len(scores))
        shared_seeds = set.intersection(*(set(v) for v in by_task.values()))
        if shared_seeds:
            averages = [statistics.fmean(by_task[t][s][metric] for t in tasks) for s in sorted(shared_seeds)]
            spread = statistics.stdev(averages) if len(averages) > 1 else None
            cells[(method, AVERAGE)] = Cell(statistics.fmean(averages), spread, len(averages))
    return AccuracyTable(methods, tasks, cells, metric, published or {})


# --- renderers ----------------------------------------------------------------------------------


def render_rich(table: AccuracyTable, width: int | None = None) -> Table:
    """Methods × tasks; transposed (a row per task) when that would not fit in `width` characters."""
    rows = table.rows()
    header = ["method", *table.columns]
    plain = [header] + [[label, *(t for t, _ in texts)] for label, texts in rows]
    needed = sum(max(len(text) for text in column) + 3 for column in zip(*plain)) + 1  # padding and borders
    cells = [[label, *(f"[bold green]{t}[/]" if best else t for t, best in texts)] for label, texts in rows]
    if width is not None and needed > width:
        header = ["task", *(label for label, _ in rows)]
        cells = [[column, *(row[1 + i] for row in cells)] for i, column in enumerate(table.columns)]
    rich_table = Table(title=table.title)
    rich_table.add_column(header[0], style="bold")
    for name in header[1:]:
        rich_table.add_column(name, justify="right")
    for row in cells:
        rich_table.add_row(*row)
    return rich_table


def render_markdown(table_or_rows) -> str:
    table = table_or_rows if isinstance(table_or_rows, AccuracyTable) else accuracy_table(table_or_rows)
    lines = [table.title, "", "| method | " + " | ".join(table.columns) + " |", "|---|" + "---:|" * len(table.columns)]
    for label, texts in table.rows():
        lines.append(f"| {label} | " + " | ".join(f"**{t}**" if best else t for t, best in texts) + " |")
    return "\n".join(lines) + "\n"


def render_csv(table: AccuracyTable) -> str:
    """Long format, one line per cell, unscaled (fractions), for spreadsheets and scripts."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["method", "column", "mean", "spread", "seeds", "best", "source"])
    for column in table.columns:
        best = table.best(column)
        for method in table.methods:
            if (method, column) in table.cells:
                cell = table.cells[(method, column)]
                writer.writerow([method, column, cell.mean, "" if cell.spread is None else cell.spread, cell.seeds, method in best, "measured"])
    for (method, task), value in table.published.items():
        writer.writerow([method, task, value, "", "", False, "published"])
    return out.getvalue()


def _latex_escape(text: str) -> str:
    for plain, latex in (("\\", r"\textbackslash{}"), ("_", r"\_"), ("&", r"\&"), ("%", r"\%"), ("#", r"\#"), ("±", r"$\pm$"), ("–", "--")):
        text = text.replace(plain, latex)
    return text


def render_latex(table: AccuracyTable) -> str:
    lines = [
        r"\begin{table}[t]",
        r"\centering",
        r"\begin{tabular}{l" + "r" * len(table.columns) + "}",
        r"\toprule",
        "method & " + " & ".join(_latex_escape(c) for c in table.columns) + r" \\",
        r"\midrule",
    ]
    for label, texts in table.rows():
        cells = (rf"\textbf{{{_latex_escape(t)}}}" if best else _latex_escape(t) for t, best in texts)
        lines.append(_latex_escape(label) + " & " + " & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", rf"\caption{{{_latex_escape(table.title)}}}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def render_html(table: AccuracyTable) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in ["method", *table.columns])
    body = []
    for label, texts in table.rows():
        cells = "".join(f"<td><b>{html.escape(t)}</b></td>" if best else f"<td>{html.escape(t)}</td>" for t, best in texts)
        body.append(f"<tr><th>{html.escape(label)}</th>{cells}</tr>")
    return f"<table>\n<caption>{html.escape(table.title)}</caption>\n<tr>{head}</tr>\n" + "\n".join(body) + "\n</table>\n"


TEXT_RENDERERS = {"markdown": render_markdown, "csv": render_csv, "latex": render_latex, "html": render_html}
SUFFIXES = {"markdown": "md", "csv": "csv", "latex": "tex", "html": "html"}


# --- inputs -------------------------------------------------------------------------------------


def rows_from_mlflow(tracker, model: str | None = None, methods: list[str] | None = None, tasks: list[str] | None = None) -> list[dict]:
    """One row per finished trial; a (config hash, seed) recorded twice counts once (the newest)."""
    conditions = ["tags.kind = 'trial'", "attributes.status = 'FINISHED'"]
    if model:
        conditions.append(f"tags.model = '{model}'")
    runs = tracker.client.search_runs(
        [tracker.experiment_id], filter_string=" and ".join(conditions), order_by=["attributes.start_time DESC"], max_results=50000
    )
    rows = {}
    for run in runs:
        tags, metrics = run.data.tags, run.data.metrics
        key = (tags.get("config_hash"), tags.get("seed"))
        if key in rows or "eval/acc" not in metrics:
            continue
        if (methods and tags["method"] not in methods) or (tasks and tags["task"] not in tasks):
            continue
        rows[key] = {
            "method": tags["method"],
            "task": tags["task"],
            "seed": int(tags["seed"]),
            "model": tags.get("model"),
            "protocol": tags.get("protocol"),
            "config_hash": tags.get("config_hash"),
            "acc": metrics["eval/acc"],
            "acc_stderr": metrics.get("eval/acc_stderr"),
            "train_loss": metrics.get("train/mean_loss"),
            "trainable_params": metrics.get("params/trainable"),
            "tokens_per_second": metrics.get("train/tokens_per_second"),
            "run_id": run.info.run_id,
        }
    return sorted(rows.values(), key=lambda r: (r["task"], r["method"], r["seed"]))


def check_single_model(rows: list[dict]) -> None:
    """Mixing base models in one table compares apples with pears; make the user pick one."""
    models = sorted({r["model"] for r in rows if r.get("model")})
    if len(models) > 1:
        raise UserError(f"runs from several models ({', '.join(models)}); pick one with --model")


def load_published(path: str | Path, model: str | None) -> dict[tuple[str, str], float]:
    """results/published.yaml: `entries: [{model, method, task, acc, source}]`, acc as a fraction."""
    path = Path(path)
    if not path.exists():
        return {}
    document = yaml.safe_load(path.read_text()) or {}
    entries = document.get("entries") or []
    published = {}
    for number, entry in enumerate(entries, start=1):
        missing = {"model", "method", "task", "acc", "source"} - set(entry)
        if missing:
            raise UserError(f"{path} entry {number} lacks {', '.join(sorted(missing))} (see the schema at the top of the file)")
        if not 0.0 <= float(entry["acc"]) <= 1.0:
            raise UserError(f"{path} entry {number}: acc must be a fraction in [0, 1], got {entry['acc']}")
        if model is None or entry["model"] == model:
            published[(entry["method"], entry["task"])] = float(entry["acc"])
    return published
