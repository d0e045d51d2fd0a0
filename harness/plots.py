"""Report figures (PNG): accuracy bars with error bars, the accuracy / size / speed Pareto view,
and the expert-usage heatmaps that methods log per trial, gathered into one folder."""

import statistics
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402

from .report import AccuracyTable  # noqa: E402

HEATMAP_ARTIFACT = "experts/usage_heatmap.png"


def accuracy_bars(table: AccuracyTable, path: Path) -> Path:
    """Grouped bars per column (task, average), one bar per method, error bar = the cell's spread."""
    columns = table.columns
    width = 0.8 / max(len(table.methods), 1)
    figure, axes = plt.subplots(figsize=(max(4.0, 1.2 * len(columns) * max(len(table.methods), 2) * 0.6), 3.5))
    for index, method in enumerate(table.methods):
        cells = [table.cells.get((method, c)) for c in columns]
        xs = [i + index * width for i, cell in enumerate(cells) if cell]
        axes.bar(
            xs,
            [cell.mean * 100 for cell in cells if cell],
            width,
            yerr=[(cell.spread or 0.0) * 100 for cell in cells if cell],
            capsize=3,
            label=method,
        )
    axes.set_xticks([i + width * (len(table.methods) - 1) / 2 for i in range(len(columns))], columns)
    axes.set_ylabel(f"{table.metric} (%)")
    axes.set_title(table.spread_label)
    axes.legend(fontsize="small")
    return _save(figure, path)


def pareto_front(points: list[tuple[float, float]], cost_is_high: bool) -> list[tuple[float, float]]:
    """Points not beaten on both axes: (cost, accuracy), where cost is lower-better unless cost_is_high."""
    ordered = sorted(points, key=lambda p: (-p[0] if cost_is_high else p[0], -p[1]))
    front, best = [], float("-inf")
    for point in ordered:
        if point[1] > best:
            front.append(point)
            best = point[1]
    return front


def efficiency(rows: list[dict], path: Path) -> Path | None:
    """Mean accuracy per method against trainable parameters and training tokens/s, Pareto fronts drawn."""
    methods = list(dict.fromkeys(r["method"] for r in rows))
    summary = {}
    for method in methods:
        mine = [r for r in rows if r["method"] == method]
        params = [r["trainable_params"] for r in mine if r.get("trainable_params")]
        speed = [r["tokens_per_second"] for r in mine if r.get("tokens_per_second")]
        if params and speed:  # untrained baselines have neither
            summary[method] = (statistics.fmean(params), statistics.fmean(speed), statistics.fmean(r["acc"] for r in mine) * 100)
    if not summary:
        return None
    figure, (left, right) = plt.subplots(1, 2, figsize=(9, 3.5), sharey=True)
    for axes, index, label, cost_is_high in ((left, 0, "trainable parameters", False), (right, 1, "train tokens / s", True)):
        for method, values in summary.items():
            axes.scatter(values[index], values[2], label=method)
            axes.annotate(method, (values[index], values[2]), fontsize="small", xytext=(3, 3), textcoords="offset points")
        front = pareto_front([(v[index], v[2]) for v in summary.values()], cost_is_high)
        axes.plot(*zip(*sorted(front)), linestyle="--", color="grey", linewidth=1)
        axes.set_xlabel(label)
        if index == 0:
            axes.set_xscale("log")
    left.set_ylabel("mean accuracy over tasks and seeds (%)")
    figure.suptitle("accuracy vs size vs speed (dashed: Pareto front)")
    return _save(figure, path)


def collect_heatmaps(tracker, rows: list[dict], folder: Path) -> list[Path]:
    """Download each trial's expert-usage heatmap, if its method logged one."""
    found = []
    for row in rows:
        listed = [f.path for f in tracker.client.list_artifacts(row["run_id"], "experts")]
        if HEATMAP_ARTIFACT not in listed:
            continue
        target = folder / f"{row['method']}_{row['task']}_seed{row['seed']}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as scratch:
            Path(tracker.client.download_artifacts(row["run_id"], HEATMAP_ARTIFACT, scratch)).replace(target)
        found.append(target)
    return found


def _save(figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path
