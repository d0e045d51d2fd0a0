"""Text forms of an AccuracyTable: terminal (Rich), Markdown, CSV, LaTeX, HTML and JSON.

Every form shows each cell's 95% interval, n and flags (harness/report/table.py decides them);
CSV and JSON also carry the p-values, the runs and the config hashes behind each cell.
"""

import csv
import html
import io
import json
from dataclasses import dataclass, field

from rich.table import Table
from rich.text import Text

from .table import AccuracyTable
from .verdict import verdict

FORMATS = ("rich", "markdown", "csv", "latex", "html", "json")
MAJORITY_ROW = "majority class"


@dataclass
class Shown:
    """A cell as every format shows it: the number, its interval, then notes (n, flags)."""

    value: str
    interval: str | None = None
    notes: list[str] = field(default_factory=list)
    bold: bool = False

    @property
    def head(self) -> str:
        return self.value + (f" {self.interval}" if self.interval else "")

    def line(self, escape=lambda text: text, bold=lambda text: text, separator: str = "; ") -> str:
        """The number and interval (bold where the cell is), then the notes."""
        head = bold(escape(self.head)) if self.bold else escape(self.head)
        return separator.join([head, *map(escape, self.notes)])


def display_rows(table: AccuracyTable) -> list[tuple[str, list[Shown | None]]]:
    """(row label, per column the Shown cell or None) for the measured rows, the majority-class row
    and the published rows."""
    rows = []
    for variant in table.variants:
        cells = [table.cells.get((variant.label, column)) for column in table.columns]
        shown = [Shown(c.value_text(), c.interval_text(), [c.n_text(), *c.flags()], c.bold) if c else None for c in cells]
        rows.append((variant.label, shown))
    if table.majority:
        majority = [table.majority.get(column) for column in table.columns]
        rows.append((MAJORITY_ROW, [Shown(f"{m[1] * 100:.1f} ({m[0]})", None, [f"n={m[2]}"]) if m else None for m in majority]))
    for method in dict.fromkeys(m for m, _ in table.published):
        rows.append(
            (
                f"{method} (published)",
                [Shown(f"{table.published[(method, c)] * 100:.1f}") if (method, c) in table.published else None for c in table.columns],
            )
        )
    return rows


def _rich_cell(cell: Shown | None) -> Text:
    if cell is None:
        return Text("–")
    text = Text(cell.value, style="bold green" if cell.bold else "")
    if cell.interval:
        text.append("\n" + cell.interval)
    for note in cell.notes:
        text.append("\n" + note, style="dim" if note.startswith("n=") else "yellow")
    return text


def render_rich(table: AccuracyTable, width: int | None = None) -> Table:
    """Rows × columns, one line per part of a cell; transposed (a row per task) when that fits
    `width` characters and the other way does not (or is wider)."""
    rows = display_rows(table)
    grid = [[Text(label, style="bold"), *map(_rich_cell, cells)] for label, cells in rows]
    header = ["method", *table.columns]
    transposed_header = ["task", *(label for label, _ in rows)]
    transposed = [[Text(column, style="bold"), *(row[1 + i] for row in grid)] for i, column in enumerate(table.columns)]
    if width is not None and _width(header, grid) > width and _width(transposed_header, transposed) < _width(header, grid):
        header, grid = transposed_header, transposed
    rich_table = Table(title=table.title)
    rich_table.add_column(header[0], overflow="fold")
    for name in header[1:]:
        rich_table.add_column(name, justify="right", overflow="fold")
    for row in grid:
        rich_table.add_row(*row)
    return rich_table


def _width(header: list[str], grid: list[list[Text]]) -> int:
    """Characters a Rich table needs unwrapped: the widest line per column, padding and borders."""
    columns = [[name, *(line for row in grid for line in row[i].plain.split("\n"))] for i, name in enumerate(header)]
    return sum(max(map(len, column)) + 3 for column in columns) + 1


def render_verdict(table: AccuracyTable) -> str:
    """The legend, then one line per column saying what is significant, then how to get more power."""
    return f"{table.legend}\n\nverdict:\n" + "".join(f"- {line}\n" for line in verdict(table))


def render_markdown(table: AccuracyTable) -> str:
    lines = [table.title, "", "| method | " + " | ".join(table.columns) + " |", "|---|" + "---:|" * len(table.columns)]
    for label, cells in display_rows(table):
        texts = ["–" if cell is None else cell.line(bold=lambda text: f"**{text}**") for cell in cells]
        lines.append(f"| {label} | " + " | ".join(texts) + " |")
    return "\n".join(lines) + "\n\n" + render_verdict(table)


CSV_FIELDS = ("row", "method", "variant", "reference", "column", "mean", "ci_low", "ci_high", "interval", "docs", "seeds",
              "majority_rate", "top_answer", "top_share", "collapsed", "p_vs_base", "p_vs_base_docs", "p_vs_base_seeds", "base_row",
              "p_vs_best", "p_vs_best_docs", "p_vs_best_seeds", "best_row", "p_vs_majority", "p_vs_majority_docs", "p_vs_majority_seeds",
              "best", "bold", "config_hash", "implementation", "run_ids", "source")  # fmt: skip


def _records(table: AccuracyTable) -> list[dict]:
    """One record per cell (unscaled fractions): what CSV and JSON hold."""
    records = []
    for column in table.columns:
        best = next((v.label for v in table.variants if (c := table.cells.get((v.label, column))) and c.best), None)
        for variant in table.variants:
            cell = table.cells.get((variant.label, column))
            if cell is None:
                continue
            reference = table.reference_for(variant)
            records.append({
                "row": variant.label, "method": variant.method, "variant": variant.id, "reference": variant.reference,
                "column": column, "mean": cell.mean, "ci_low": cell.low, "ci_high": cell.high, "interval": cell.interval,
                "docs": cell.docs, "seeds": cell.seeds, "majority_rate": table.majority.get(column, (None, None))[1],
                "top_answer": cell.top_answer, "top_share": cell.top_share, "collapsed": cell.collapsed,
                **_test_fields("base", cell.p_base), "base_row": reference.label if reference and cell.p_base else None,
                **_test_fields("best", cell.p_best), "best_row": best if cell.p_best else None, **_test_fields("majority", cell.p_majority),
                "best": cell.best, "bold": cell.bold,
                "config_hash": variant.config_hashes.get(column), "implementation": variant.implementation.get("implementation"), "run_ids": cell.run_ids, "source": "reference" if variant.reference else "measured",
            })  # fmt: skip
    for (method, task), value in table.published.items():
        records.append({"row": f"{method} (published)", "method": method, "column": task, "mean": value, "source": "published"})
    return records


def _test_fields(name: str, test) -> dict:
    values = (None, None, None) if test is None else (test.p, test.p_docs, test.p_seeds)
    return dict(zip((f"p_vs_{name}", f"p_vs_{name}_docs", f"p_vs_{name}_seeds"), values))


def render_csv(table: AccuracyTable) -> str:
    """Long format, one line per cell, unscaled (fractions), for spreadsheets and scripts."""
    out = io.StringIO()
    writer = csv.DictWriter(out, CSV_FIELDS, lineterminator="\n", restval="")
    writer.writeheader()
    for record in _records(table):
        writer.writerow({k: "" if v is None else " ".join(v) if isinstance(v, list) else v for k, v in record.items()})
    return out.getvalue()


def _row(v) -> dict:
    return {"label": v.label, "method": v.method, "variant": v.id, "reference": v.reference, "params": v.params,
            "config_hashes": v.config_hashes, "implementation": v.implementation, "run_ids": v.run_ids()}  # fmt: skip


def render_json(table: AccuracyTable) -> str:
    document = {
        "title": table.title,
        "model": table.model,
        "metric": table.metric,
        "columns": table.columns,
        "legend": table.legend,
        "rows": [_row(v) for v in table.variants],
        "majority": {column: {"answer": a, "rate": rate, "docs": n} for column, (a, rate, n) in table.majority.items()},
        "cells": _records(table),
        "verdict": verdict(table),
    }
    return json.dumps(document, indent=1) + "\n"


def _latex_escape(text: str) -> str:
    for plain, latex in (("\\", r"\textbackslash{}"), ("_", r"\_"), ("&", r"\&"), ("%", r"\%"), ("#", r"\#"),
                         ("±", r"$\pm$"), ("≥", r"$\geq$"), ("–", "--")):  # fmt: skip
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
    for label, cells in display_rows(table):
        texts = ["--" if cell is None else cell.line(_latex_escape, lambda text: rf"\textbf{{{text}}}") for cell in cells]
        lines.append(_latex_escape(label) + " & " + " & ".join(texts) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", rf"\caption{{{_latex_escape(table.title + '. ' + table.legend)}}}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def render_html(table: AccuracyTable) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in ["method", *table.columns])
    body = []
    for label, cells in display_rows(table):
        texts = ["<td>–</td>" if cell is None else "<td>" + cell.line(html.escape, lambda text: f"<b>{text}</b>", "<br>") + "</td>" for cell in cells]
        body.append(f"<tr><th>{html.escape(label)}</th>{''.join(texts)}</tr>")
    caption = f"{html.escape(table.title)}<br><small>{html.escape(table.legend)}</small>"
    return f"<table>\n<caption>{caption}</caption>\n<tr>{head}</tr>\n" + "\n".join(body) + "\n</table>\n"


TEXT_RENDERERS = {"markdown": render_markdown, "csv": render_csv, "latex": render_latex, "html": render_html, "json": render_json}
SUFFIXES = {"markdown": "md", "csv": "csv", "latex": "tex", "html": "html", "json": "json"}
