"""Report figures drawn from one AccuracyTable, so they show exactly the table's runs: accuracy bars
with 95% CIs, the accuracy / size / speed Pareto view (each a PNG and an SVG for papers), and each
trial's expert-usage heatmap (the PNG the trial logged)."""

import itertools
import statistics
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt
from matplotlib import ticker

from .results import download
from .table import AVERAGE, AccuracyTable, Cell

HEATMAP_ARTIFACT = "experts/usage_heatmap.png"
INTERVAL_KINDS = {"Wilson": "Wilson over docs", "t": "t over seeds", "normal": "normal over docs"}  # Cell.interval → legend


def series_label(label: str, cells) -> str:
    """A legend entry that says what its error bars are: seeds, and Wilson over docs (one seed) or t
    over seeds, which measure different things (docs sampled vs seed-to-seed spread)."""
    seeds = sorted({c.seeds for c in cells})
    count = str(seeds[0]) if len(seeds) == 1 else f"{seeds[0]}-{seeds[-1]}"
    kinds = "; ".join(INTERVAL_KINDS[kind] for kind in dict.fromkeys(c.interval for c in cells) if kind in INTERVAL_KINDS)
    return f"{label} ({count} seed{'s' if seeds[-1] > 1 else ''}" + (f"; {kinds})" if kinds else ")")


def log_spaced(values: list[float]) -> bool:
    """Values a log axis spaces evenly: positive, and in one constant ratio (0.0625, 0.125, 0.25) or spanning 8× or more."""
    xs = sorted(set(values))
    if len(xs) < 2 or xs[0] <= 0:
        return False
    ratios = [b / a for a, b in itertools.pairwise(xs)]
    return xs[-1] >= 8 * xs[0] or (len(xs) >= 3 and max(ratios) - min(ratios) <= 1e-9 * max(ratios))


def subtitle(table: AccuracyTable) -> str:
    """Model and eval budget: numbers from different budgets are not comparable."""
    limits = sorted({v.params.get("eval.limit", "None") for v in table.variants})
    budget = ", ".join("whole eval splits" if limit == "None" else f"eval.limit={limit}" for limit in limits)
    return " · ".join(filter(None, [table.model, budget]))


def _errors(cells) -> list[list[float]]:
    """Asymmetric error bars (below, above) in points from each cell's interval."""
    return [
        [(c.mean - c.low) * 100 if c.low is not None else 0.0 for c in cells],
        [(c.high - c.mean) * 100 if c.high is not None else 0.0 for c in cells],
    ]


def accuracy_bars(table: AccuracyTable, path: Path) -> list[Path]:
    return save(accuracy_figure(table), path)


def accuracy_figure(table: AccuracyTable):
    """Grouped bars per column, one per row, error bars = 95% CI; the majority-class rate of each
    eval set as a dashed line; a letter above a bar names the answer a collapsed predictor gives."""
    columns, variants = table.columns, table.variants
    width = 0.8 / max(len(variants), 1)
    figure, axes = plt.subplots(figsize=(max(5.0, 0.45 * len(columns) * len(variants) + 2.5), 4.0))
    for index, variant in enumerate(variants):
        cells = [(i, table.cells[(variant.label, c)]) for i, c in enumerate(columns) if (variant.label, c) in table.cells]
        xs = [i + (index - (len(variants) - 1) / 2) * width for i, _ in cells]
        style: dict[str, Any] = {"color": "0.6", "hatch": "//", "edgecolor": "0.3"} if variant.reference else {}
        label = series_label(variant.label, [c for _, c in cells])
        axes.bar(xs, [c.mean * 100 for _, c in cells], width, yerr=_errors([c for _, c in cells]), capsize=3, label=label, **style)
        for x, (_, cell) in zip(xs, cells):
            if cell.collapsed and cell.top_answer is not None:
                axes.annotate(
                    cell.top_answer,
                    (x, cell.high * 100 if cell.high is not None else cell.mean * 100),
                    ha="center",
                    va="bottom",
                    fontsize="small",
                    fontweight="bold",
                    xytext=(0, 2),
                    textcoords="offset points",
                )
    for i, column in enumerate(columns):
        if column in table.majority:
            axes.hlines(
                table.majority[column][1] * 100,
                i - 0.45,
                i + 0.45,
                colors="black",
                linestyles="dashed",
                linewidth=1,
                label="majority class" if i == 0 else None,  # type: ignore[arg-type]  # matplotlib's stubs say str; None means no legend entry
            )
    axes.set_xticks(range(len(columns)), [f"{c}\n(n={_docs(table, c)})" for c in columns])
    axes.set_ylabel(f"{table.metric} (%)")
    axes.set_ylim(0, 105)
    letters = " (a letter above a bar: ≥ 90% of its answers are that letter)" if any(c.collapsed for c in table.cells.values()) else ""
    axes.set_title(f"{table.metric} with 95% CI{letters}\n{subtitle(table)}", fontsize="medium")
    axes.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    return figure


def _docs(table: AccuracyTable, column: str) -> str:
    docs = sorted({c.docs for (_, col), c in table.cells.items() if col == column and c.docs})
    return "?" if not docs else str(docs[0]) if len(docs) == 1 else f"{docs[0]}-{docs[-1]}"


def pareto_front(points: list[tuple[float, float]], cost_is_high: bool) -> list[tuple[float, float]]:
    """Points not beaten on both axes: (cost, accuracy), where cost is lower-better unless cost_is_high."""
    ordered = sorted(points, key=lambda p: (-p[0] if cost_is_high else p[0], -p[1]))
    front, best = [], float("-inf")
    for point in ordered:
        if point[1] > best:
            front.append(point)
            best = point[1]
    return front


def efficiency_points(table: AccuracyTable) -> dict[str, tuple[float, float, Cell]]:
    """Row label → (trainable parameters, train tokens/s, the accuracy cell plotted: average or the one task)."""
    column = AVERAGE if AVERAGE in table.columns else table.columns[0] if len(table.columns) == 1 else None
    points: dict[str, tuple[float, float, Cell]] = {}
    if column is None:  # several tasks and no average: no one cell to plot
        return points
    for variant in table.variants:
        runs = [r for runs in variant.runs.values() for r in runs]
        params = [r["trainable_params"] for r in runs if r.get("trainable_params")]
        speed = [r["tokens_per_second"] for r in runs if r.get("tokens_per_second")]
        cell = table.cells.get((variant.label, column))
        if params and speed and cell:  # untrained baselines have neither
            points[variant.label] = (statistics.fmean(params), statistics.fmean(speed), cell)
    return points


def efficiency(table: AccuracyTable, path: Path) -> list[Path]:
    """Accuracy (with 95% CI) against trainable parameters and training tokens/s, Pareto fronts dashed,
    the zero-shot base dotted."""
    points = efficiency_points(table)
    if not points:
        return []
    column = AVERAGE if AVERAGE in table.columns else table.columns[0]
    references = [(v.label, table.cells[(v.label, column)]) for v in table.variants if v.reference and (v.label, column) in table.cells]
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4.0), sharey=True)
    for axes, index, label, cost_is_high in ((left, 0, "trainable parameters", False), (right, 1, "train tokens / s", True)):
        for name, cell in references:  # what a method has to beat, drawn across the whole axis
            axes.axhline(cell.mean * 100, color="0.4", linestyle=":", linewidth=1.2, label=name)
        xs = _dodge([v[:2][index] for v in points.values()], relative=index == 0)  # v[:2]: the two costs
        for x, (name, values) in zip(xs, points.items()):
            cell = values[2]
            axes.errorbar(x, cell.mean * 100, yerr=_errors([cell]), fmt="o", capsize=3, label=series_label(name, [cell]))
        measured = [(v[:2][index], v[2].mean * 100) for v in points.values()]
        drawn_at = dict(zip(measured, xs))  # the front is decided on measured values, drawn through the dodged points
        front = sorted((drawn_at[point], point[1]) for point in pareto_front(measured, cost_is_high))
        axes.plot(*zip(*front), linestyle="--", color="grey", linewidth=1)
        axes.set_xlabel(label)
        if max(xs) > 10 * min(xs):  # sizes spanning decades (LoRA vs full mixtures); linear otherwise
            axes.set_xscale("log")
            axes.xaxis.set_minor_formatter(ticker.NullFormatter())
        else:
            axes.xaxis.set_major_locator(ticker.MaxNLocator(5))  # engineering labels are wide: few of them
        axes.xaxis.set_major_formatter(ticker.EngFormatter())
    left.set_ylabel(f"{table.metric} (%), {'mean over tasks' if column == AVERAGE else column}")
    right.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)
    figure.suptitle(f"accuracy vs size vs speed (95% CI; dashed: Pareto front; dotted: zero-shot base)\n{subtitle(table)}", fontsize="medium")
    return save(figure, path)


def _dodge(xs: list[float], relative: bool) -> list[float]:
    """Spread points that share an x (e.g. one method under two learning rates) so their error bars
    do not hide each other: ±2% steps (multiplicative on a log axis), the values themselves unchanged."""
    span = (max(xs) - min(xs)) or max(abs(max(xs)), 1.0)
    out = list(xs)
    for x in set(xs):
        same = [i for i, other in enumerate(xs) if other == x]
        for rank, i in enumerate(same):
            step = (rank - (len(same) - 1) / 2) * 0.02
            out[i] = x * (1 + step) if relative else x + step * span
    return out


def collect_heatmaps(tracker, table: AccuracyTable, folder: Path) -> list[Path]:
    """Download each trial's expert-usage heatmap, if its method logged one."""
    found = []
    for variant in table.variants:
        several = sum(v.method == variant.method for v in table.variants) > 1
        name = f"{variant.method}-{variant.id}" if several else variant.method
        for task, runs in variant.runs.items():
            for run in runs:
                listed = [f.path for f in tracker.client.list_artifacts(run["run_id"], "experts")]
                if HEATMAP_ARTIFACT in listed:
                    path = download(tracker, run["run_id"], HEATMAP_ARTIFACT, folder / f"{name}_{task}_seed{run['seed']}.png")
                    found.append(_titled(path, f"{variant.label} on {task}, seed {run['seed']}\n{subtitle(table)}"))
    return found


def _titled(path: Path, title: str) -> Path:
    """The trial's heatmap as logged (pixel for pixel) under a title naming the run, model and eval budget:
    the trial draws it without knowing either."""
    image = plt.imread(path)
    height, width = image.shape[:2]
    dpi, header = 100, 46  # pixels for two lines of title
    figure = plt.figure(figsize=(width / dpi, (height + header) / dpi), dpi=dpi)
    figure.figimage(image, 0, 0)
    figure.suptitle(title, y=1 - 4 / (height + header), va="top", fontsize=9)
    figure.savefig(path, dpi=dpi)
    plt.close(figure)
    return path


def save(figure, path: Path) -> list[Path]:
    """`path` (PNG) and the same figure as SVG beside it, for papers: text kept as text (editable,
    searchable) and no date, so the same table gives the same file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    vector = path.with_suffix(".svg")
    figure.savefig(path, dpi=120, bbox_inches="tight")
    with plt.rc_context({"svg.fonttype": "none", "svg.hashsalt": "adamole-bench"}):
        figure.savefig(vector, bbox_inches="tight", metadata={"Date": None})
    plt.close(figure)
    return [path, vector]
