"""A metric against one swept hyperparameter: the AdaMoLE paper's threshold-sensitivity and expert-count
figures. Built on a report table (harness/report/table.py), so its cells are the table's: the mean over seeds,
its 95% interval and n; each point adds the seed-to-seed sd. One line per setting of the other
parameters (e.g. one per adamole.num_experts), the zero-shot base as the reference."""

import csv
import io
import json
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from rich.table import Table

from ...base.errors import UserError, unknown
from ..store.provenance import code_version
from .results import Variant, _normal, _setting_name
from .table import AccuracyTable, Cell

FORMATS = ("rich", "markdown", "csv", "json")


@dataclass
class Series:
    """One line of the figure: a method with the other settings fixed, its points in x order."""

    label: str
    points: list[tuple[str, Variant]]  # (x as stored, the variant measured there)


@dataclass
class Sensitivity:
    key: str  # as the user writes it: adamole.max_threshold, train.lr
    table: AccuracyTable
    series: list[Series]

    @property
    def references(self) -> list[Variant]:
        return [v for v in self.table.variants if v.reference]

    @property
    def title(self) -> str:
        return f"{self.table.metric} (%) vs {self.key}: mean ± sd over seeds [95% CI]" + (f", {self.table.model}" if self.table.model else "")


def _param(key: str, variant: Variant) -> str | None:
    """The stored param of `key` in this variant's runs (`adamole.rank` is method_config.rank of adamole)."""
    head, _, tail = key.partition(".")
    if key in variant.params:
        return key
    if head == variant.method and f"method_config.{tail}" in variant.params:
        return f"method_config.{tail}"
    return None


def _order(value: str):
    normal = _normal(value)
    return (0, normal, "") if isinstance(normal, float) else (1, 0.0, str(value))


def sensitivity(table: AccuracyTable, key: str) -> Sensitivity:
    """Group the table's rows into series along `key`; a key that does not vary in them is one line."""
    measured = [(v, _param(key, v)) for v in table.variants if not v.reference]
    swept = [(v, p) for v, p in measured if p]
    if len({v.params[p] for v, p in swept}) < 2:
        varying = sorted({_setting_name(v.method, k) for v in table.variants for k in v.params
                          if len({w.params.get(k) for w in table.variants if w.method == v.method}) > 1})  # fmt: skip
        if not swept:
            raise unknown(
                "setting for --sensitivity", key, varying or ["(none: every row has the same settings)"], "pick one that differs between the rows"
            )
        raise UserError(f"'{key}' has one value in these runs; nothing to plot (settings that vary: {', '.join(varying) or 'none'})")
    groups: dict[tuple, list[tuple[str, Variant]]] = {}
    for variant, param in swept:
        others = tuple(sorted((k, v) for k, v in variant.params.items() if k != param))
        groups.setdefault((variant.method, others), []).append((variant.params[param], variant))
    series = []
    for (method, others), points in groups.items():
        siblings = [dict(o) for m, o in groups if m == method]
        differing = sorted(k for k in dict(others) if len({s.get(k) for s in siblings}) > 1)
        details = ", ".join(f"{_setting_name(method, k)}={dict(others)[k]}" for k in differing)
        series.append(Series(f"{method} ({details})" if details else method, sorted(points, key=lambda p: _order(p[0]))))
    return Sensitivity(key, table, series)


def _sd(cell: Cell) -> float | None:
    return statistics.stdev(cell.seed_values) if len(cell.seed_values) > 1 and not cell.constant else None


def cell_text(cell: Cell | None) -> str:
    if cell is None:
        return "–"
    sd = _sd(cell)
    spread = f" ± {sd * 100:.1f}" if sd is not None else ""
    interval = f" {cell.interval_text()}" if cell.interval_text() else ""
    return f"{cell.value_text()}{spread}{interval}; {cell.n_text()}"


def rows(result: Sensitivity) -> list[tuple[str, str, list[Cell | None]]]:
    """(series label, x, a cell per column): every point, then the base reference rows."""
    table = result.table
    lines = [(s.label, x, [table.cells.get((v.label, c)) for c in table.columns]) for s in result.series for x, v in s.points]
    lines += [(v.label, "–", [table.cells.get((v.label, c)) for c in table.columns]) for v in result.references]
    return lines


def render_markdown(result: Sensitivity) -> str:
    columns = result.table.columns
    lines = [result.title, "", f"| series | {result.key} | " + " | ".join(columns) + " |", "|---|---:|" + "---:|" * len(columns)]
    lines += [f"| {label} | {x} | " + " | ".join(map(cell_text, cells)) + " |" for label, x, cells in rows(result)]
    return "\n".join(lines) + "\n"


def render_rich(result: Sensitivity) -> Table:
    table = Table(title=result.title)
    for name in ("series", result.key, *result.table.columns):
        table.add_column(name, overflow="fold", justify="left" if name == "series" else "right")
    for label, x, cells in rows(result):
        table.add_row(label, x, *(cell_text(c).replace("; ", "\n") for c in cells))
    return table


def _records(result: Sensitivity) -> list[dict]:
    records = []
    for label, x, cells in rows(result):
        for column, cell in zip(result.table.columns, cells):
            if cell is not None:
                records.append({"series": label, "key": result.key, "value": None if x == "–" else x, "column": column, "mean": cell.mean,
                                "sd": _sd(cell), "ci_low": cell.low, "ci_high": cell.high, "interval": cell.interval, "docs": cell.docs,
                                "seeds": cell.seeds, "run_ids": cell.run_ids})  # fmt: skip
    return records


def render_csv(result: Sensitivity) -> str:
    out = io.StringIO()
    fields = ("series", "key", "value", "column", "mean", "sd", "ci_low", "ci_high", "interval", "docs", "seeds", "run_ids")
    writer = csv.DictWriter(out, fields, lineterminator="\n")
    writer.writeheader()
    for record in _records(result):
        writer.writerow({k: "" if v is None else " ".join(v) if isinstance(v, list) else v for k, v in record.items()})
    return out.getvalue()


def render_json(result: Sensitivity) -> str:
    return json.dumps({"title": result.title, "key": result.key, "metric": result.table.metric, "model": result.table.model,
                       "columns": result.table.columns, "cells": _records(result)}, indent=1) + "\n"  # fmt: skip


TEXT_RENDERERS = {"markdown": render_markdown, "csv": render_csv, "json": render_json}


def plot(result: Sensitivity, path: Path) -> list[Path]:
    """The figure as PNG and SVG."""
    from .plots import save  # matplotlib (about 1 s) only for the figure; `compare` renders the table without it

    return save(figure(result), path)


def figure(result: Sensitivity):
    """One panel per column: the metric (95% CI bars) against the swept value, a line per series, base
    dotted; a log axis where the values are log-spaced (a doubling sweep)."""
    from .plots import log_spaced, plt, series_label, subtitle  # matplotlib, as in plot()

    columns = result.table.columns
    values = list(dict.fromkeys(x for s in result.series for x, _ in s.points))
    numeric = all(isinstance(_normal(x), float) for x in values)
    order = sorted(values, key=_order)
    position = {x: (_normal(x) if numeric else order.index(x)) for x in values}
    drawn, axes = plt.subplots(1, len(columns), figsize=(4.2 * len(columns) + 1.8, 3.8), sharey=True, squeeze=False)
    for panel, column in zip(axes[0], columns):
        for variant in result.references:
            cell = result.table.cells.get((variant.label, column))
            if cell:
                panel.axhline(cell.mean * 100, color="0.4", linestyle=":", linewidth=1.2, label=variant.label)
        for series in result.series:
            points = [(position[x], result.table.cells.get((v.label, column))) for x, v in series.points]
            points = [(p, c) for p, c in points if c is not None]
            if not points:
                continue
            xs, cells = zip(*points)
            below = [(c.mean - c.low) * 100 if c.low is not None else 0.0 for c in cells]
            above = [(c.high - c.mean) * 100 if c.high is not None else 0.0 for c in cells]
            panel.errorbar(xs, [c.mean * 100 for c in cells], yerr=[below, above], marker="o", capsize=3, label=series_label(series.label, cells))
        if numeric and log_spaced(list(position.values())):
            panel.set_xscale("log", base=2)
        if numeric:
            panel.set_xticks(sorted(position.values()), [str(x) for x in order])
        else:
            panel.set_xticks(range(len(order)), order, rotation=20, fontsize="small")
        panel.minorticks_off()
        panel.set_xlabel(result.key)
        panel.set_title(column, fontsize="medium")
    axes[0][0].set_ylabel(f"{result.table.metric} (%)")
    axes[0][-1].legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)
    drawn.suptitle(f"{result.table.metric} vs {result.key} (95% CI; dotted: zero-shot base)\n{subtitle(result.table)}", fontsize="medium")
    return drawn


def write(result: Sensitivity, folder: Path) -> list[Path]:
    """`<key>.png`, `<key>.svg` and the table as `<key>.md/.csv/.json` in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    written = plot(result, folder / f"{result.key}.png")
    for name, suffix in (("markdown", "md"), ("csv", "csv"), ("json", "json")):
        path = folder / f"{result.key}.{suffix}"
        path.write_text(TEXT_RENDERERS[name](result))
        written.append(path)
    return written


def log_report(tracker, result: Sensitivity, output: Path | None, filters: dict[str, str]) -> tuple[str, list[Path]]:
    """A kind=report run holding sensitivity/<key>.png and its tables; the same files in `output` if given."""
    tags = {"kind": "report", "sensitivity": result.key, **{f"filter.{k}": v for k, v in filters.items() if v}, **code_version()}
    with tempfile.TemporaryDirectory() as scratch, tracker.run(f"sensitivity {result.key} {time.strftime('%Y-%m-%d %H:%M:%S')}", tags) as run_id:
        write(result, Path(scratch))
        tracker.log_metrics(run_id, {"report/trials": len(result.table.run_ids())})
        tracker.log_artifacts(run_id, scratch, "sensitivity")
    return run_id, write(result, output) if output else []


def log_sweep_sensitivity(tracker, sweep_id: str, config, outcomes, console) -> None:
    """sensitivity/<key>.{png,md,csv,json} on a grid sweep's parent run, one set per swept setting."""
    if not config.grid:
        return
    from .bundle import sweep_table  # the report bundle pulls in matplotlib; only a grid sweep needs it

    try:
        table = sweep_table(tracker, config, outcomes)
        if table is None:
            return
        with tempfile.TemporaryDirectory() as scratch:
            for key in config.grid:
                try:
                    result = sensitivity(table, key)
                except UserError:
                    continue  # e.g. only one of its values finished
                write(result, Path(scratch))
            tracker.log_artifacts(sweep_id, scratch, "sensitivity")
    except Exception as err:  # noqa: BLE001 - every trial is already recorded; a figure that fails must not fail the sweep
        console.print(
            f"[yellow]warning:[/] sensitivity plots not logged ({type(err).__name__}: {err}); `adamole-bench report --sensitivity KEY` rebuilds them"
        )
