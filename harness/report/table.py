"""Comparison tables: one row per (method, config variant), one column per task plus `average`.

Every cell carries its evidence: the accuracy with a 95% interval, n eval docs and the seeds
behind it, a flag when the predictions collapsed onto one answer, and paired tests over per-doc
correctness against the zero-shot `base` row, the column's best row and the constant predictor that
always gives the majority answer (what a model that only learned the label prior scores).
docs/statistics.md explains each number; harness/report/render.py turns a table into text.
"""

import math
import statistics
from dataclasses import dataclass, field

from ...tasks.registry import LETTERS
from .results import Variant, reference_key, untrained
from .stats import (
    ALPHA,
    COLLAPSED_SHARE,
    most_common,
    normal_interval,
    seeds_pvalue,
    sign_flip_pvalue,
    t_interval,
    weighted_sign_flip_pvalue,
    wilson_interval,
)

AVERAGE = "average"


def answer_name(value) -> str:
    """A choice index as the letter the prompt shows (A, B, ...); other answers as they are."""
    return LETTERS[value] if isinstance(value, int) and 0 <= value < len(LETTERS) else str(value)


@dataclass
class Paired:
    """Two cells compared: over docs (sign-flip/McNemar) and, with several seeds, over seeds (t-test).
    `p` is the larger: a difference counts only if it survives both doc and seed sampling."""

    p: float
    p_docs: float | None
    p_seeds: float | None


@dataclass
class Cell:
    mean: float
    low: float | None
    high: float | None
    docs: int | None  # eval docs per seed (average column: summed over its tasks)
    interval: str  # how [low, high] was computed: Wilson, t or normal
    run_ids: list[str]
    seed_values: list[float]  # the score of each seed (average column: each seed's mean over tasks)
    constant: bool = False  # an untrained model: the same score for every seed
    correct: dict | None = None  # doc (or (task, doc)) → correctness averaged over the seeds
    weights: dict | None = None  # average column: each doc's weight in the mean over tasks
    top_answer: str | None = None  # the answer predicted most often, and its share of predictions
    top_share: float | None = None
    p_base: Paired | None = None  # against the base row of the same eval protocol
    p_best: Paired | None = None  # against the best row of the column
    p_majority: Paired | None = None  # against always answering the column's majority class
    best: bool = False
    bold: bool = False  # best and significantly better than every other row and the majority class

    @property
    def seeds(self) -> int:
        return len(self.seed_values)

    @property
    def collapsed(self) -> bool:
        return self.top_share is not None and self.top_share >= COLLAPSED_SHARE

    def value_text(self) -> str:
        return f"{self.mean * 100:.1f}"

    def interval_text(self) -> str | None:
        return None if self.low is None or self.high is None else f"[{self.low * 100:.1f}, {self.high * 100:.1f}]"

    def n_text(self) -> str:
        return f"n={self.docs if self.docs is not None else '?'}" + (f", {self.seeds} seeds" if self.seeds > 1 else "")

    def flags(self) -> list[str]:
        flags = []
        if self.collapsed:
            flags.append(f"always {self.top_answer}" if self.top_share == 1 else f"{self.top_share:.0%} {self.top_answer}")
        if self.correct is None:
            flags.append("untested (no per-doc samples)")
        tests = (("base", self.p_base), ("best", self.p_best), ("majority", self.p_majority))
        flags += [f"n.s. vs {name}" for name, test in tests if test is not None and test.p >= ALPHA]
        return flags

    def beats(self, other: "Cell", test: Paired | None) -> bool:
        return test is not None and test.p < ALPHA and self.mean > other.mean


@dataclass
class AccuracyTable:
    variants: list[Variant]
    tasks: list[str]
    cells: dict[tuple[str, str], Cell]  # (row label, task or AVERAGE) → cell
    majority: dict[str, tuple[str, float, int]] = field(default_factory=dict)  # column → (answer, rate, docs)
    majority_cells: dict[str, Cell] = field(default_factory=dict)  # column → the always-majority predictor
    published: dict[tuple[str, str], float] = field(default_factory=dict)  # (method, task) → paper number
    model: str | None = None
    metric: str = "acc"

    @property
    def columns(self) -> list[str]:
        has_average = len(self.tasks) > 1 and any((v.label, AVERAGE) in self.cells for v in self.variants)
        return self.tasks + ([AVERAGE] if has_average else [])

    @property
    def title(self) -> str:
        return f"{self.metric} (%) with 95% CI" + (f", {self.model}" if self.model else "")

    legend = (
        "[low, high]: 95% CI (1 seed: Wilson over docs; k seeds: t over seeds, at least as wide) · n: eval docs · "
        "n.s. vs base/best/majority: no significant difference (p ≥ 0.05) in a paired test over docs and seeds "
        "(majority: always giving the majority answer) · "
        "bold: significantly better than every other row and the majority class · "
        f"always X / NN% X: ≥ {COLLAPSED_SHARE:.0%} of answers are X"
    )

    def reference_for(self, variant: Variant) -> Variant | None:
        """The base row a method row is compared with: same model, precision, data, eval protocol and shared code."""
        if variant.reference:
            return None
        key = reference_key(variant.params, variant.implementation)
        return next((v for v in self.variants if v.reference and reference_key(v.params, v.implementation) == key), None)

    def run_ids(self) -> list[str]:
        return [run_id for v in self.variants for run_id in v.run_ids()]


def _widen_over_seeds(cell: Cell, values: list[float]) -> None:
    """With several seeds, the t-interval over their scores where it is wider than the one over docs."""
    if len(values) > 1:
        low, high = t_interval(values)
        assert cell.low is not None and cell.high is not None  # a cell over docs has its interval
        if high - low > cell.high - cell.low:
            cell.low, cell.high, cell.interval = max(0.0, low), min(1.0, high), "t"


def _task_cell(runs: list[dict], samples) -> Cell:
    records = [samples(r["run_id"]) for r in runs]
    accuracies = [r["acc"] for r in runs]
    docs = runs[0].get("docs") or (len(records[0]) if records[0] else None)
    mean = statistics.fmean(accuracies)
    cell = Cell(mean, None, None, docs, "none", [r["run_id"] for r in runs], accuracies, untrained(runs[0]["params"]))
    if docs:
        cell.low, cell.high = wilson_interval(mean, docs)
        cell.interval = "Wilson"
        _widen_over_seeds(cell, accuracies)
    if all(records) and all(s.get("acc") is not None for record in records for s in record):
        shared = set.intersection(*({s["doc_id"] for s in record} for record in records))
        per_doc = [{s["doc_id"]: s["acc"] for s in record} for record in records]
        cell.correct = {doc: statistics.fmean(d[doc] for d in per_doc) for doc in sorted(shared)}
    predictions = [s["prediction"] for record in records if record for s in record if "prediction" in s]
    answer, cell.top_share = most_common(predictions)
    cell.top_answer = None if answer is None else answer_name(answer)
    return cell


def _average_cell(variant: Variant, tasks: list[str], cells: dict) -> Cell | None:
    """Mean over tasks per seed, then over the seeds every task shares (untrained: its one run per task)."""
    if any(t not in variant.runs for t in tasks):
        return None
    if untrained(variant.params):
        by_seed = {None: {t: variant.runs[t][0] for t in tasks}}
    else:
        seeds = set.intersection(*({r["seed"] for r in variant.runs[t]} for t in tasks))
        by_seed = {s: {t: next(r for r in variant.runs[t] if r["seed"] == s) for t in tasks} for s in sorted(seeds)}
    if not by_seed:
        return None
    averages = [statistics.fmean(runs[t]["acc"] for t in tasks) for runs in by_seed.values()]
    task_means = {t: statistics.fmean(runs[t]["acc"] for runs in by_seed.values()) for t in tasks}
    task_cells = [cells[(variant.label, t)] for t in tasks]
    mean = statistics.fmean(averages)
    run_ids = [runs[t]["run_id"] for runs in by_seed.values() for t in tasks]
    cell = Cell(mean, None, None, None, "none", run_ids, averages, untrained(variant.params))
    if all(c.docs for c in task_cells):
        cell.docs = sum(c.docs for c in task_cells)
        variance = sum(task_means[t] * (1 - task_means[t]) / c.docs for t, c in zip(tasks, task_cells)) / len(tasks) ** 2
        cell.low, cell.high = normal_interval(mean, variance)
        cell.interval = "normal"
        _widen_over_seeds(cell, averages)
    if all(c.seeds == len(by_seed) and c.correct is not None for c in task_cells):  # per-doc values over the same seeds
        cell.correct = {(t, doc): value for t, c in zip(tasks, task_cells) for doc, value in c.correct.items()}
        cell.weights = {(t, doc): 1 / (len(tasks) * len(c.correct)) for t, c in zip(tasks, task_cells) for doc in c.correct}
    return cell


def docs_pvalue(a: Cell, b: Cell) -> float | None:
    """Sign-flip test on the docs both cells scored (exact McNemar with one seed per side)."""
    if a.correct is None or b.correct is None:
        return None
    common = sorted(a.correct.keys() & b.correct.keys())
    if not common:
        return None
    if a.weights is not None:
        differences = [a.correct[k] - b.correct[k] for k in common]
        return weighted_sign_flip_pvalue(differences, [a.weights[k] for k in common])
    scale = math.lcm(a.seeds, b.seeds)  # per-doc means over k seeds are multiples of 1/k
    return sign_flip_pvalue(round((a.correct[k] - b.correct[k]) * scale) for k in common)


def paired_test(a: Cell, b: Cell) -> Paired | None:
    """Docs always; seeds where both sides' seed-to-seed spread is known (≥ 2 seeds, or untrained)."""
    p_seeds = None
    if not (a.constant and b.constant):
        if b.constant and len(a.seed_values) > 1:
            p_seeds = seeds_pvalue(a.seed_values, b.mean)
        elif a.constant and len(b.seed_values) > 1:
            p_seeds = seeds_pvalue(b.seed_values, a.mean)
        elif len(a.seed_values) > 1 and len(b.seed_values) > 1:
            p_seeds = seeds_pvalue(a.seed_values, b.seed_values)
    p_docs = docs_pvalue(a, b)
    found = [p for p in (p_docs, p_seeds) if p is not None]
    return Paired(max(found), p_docs, p_seeds) if found else None


def _significance(table: AccuracyTable) -> None:
    for column in table.columns:
        present = [(v, table.cells[(v.label, column)]) for v in table.variants if (v.label, column) in table.cells]
        if len(present) < 2:
            continue
        top = max(c.mean for _, c in present)
        leaders = [(v, c) for v, c in present if c.mean == top]
        best_cell = leaders[0][1]
        for variant, cell in present:
            cell.best = cell.mean == top
            if not cell.best:
                cell.p_best = paired_test(cell, best_cell)
            reference = table.reference_for(variant)
            if reference and (reference.label, column) in table.cells:
                cell.p_base = paired_test(cell, table.cells[(reference.label, column)])
            majority = table.majority_cells.get(column)
            if majority is not None and not cell.constant:
                cell.p_majority = paired_test(cell, majority)
        others = [c for _, c in present if not c.best]
        majority = table.majority_cells.get(column)
        above_prior = majority is None or best_cell.constant or best_cell.beats(majority, best_cell.p_majority)
        best_cell.bold = len(leaders) == 1 and above_prior and all(c.p_best is not None and c.p_best.p < ALPHA for c in others)


def _majority(table: AccuracyTable, samples) -> None:
    """Each column's majority-class rate over the docs its rows scored (labels of one doc agree)."""
    for task in table.tasks:
        labels = {}
        for variant in table.variants:
            for run in variant.runs.get(task, []):
                labels.update({s["doc_id"]: s["label"] for s in samples(run["run_id"]) or []})
        answer, rate = most_common(labels.values())
        if answer is not None and rate is not None:
            table.majority[task] = (answer_name(answer), rate, len(labels))
            correct = {doc: float(label == answer) for doc, label in sorted(labels.items())}
            table.majority_cells[task] = Cell(rate, None, None, len(labels), "none", [], [rate], constant=True, correct=correct)


def _average_majority(table: AccuracyTable) -> None:
    """The majority predictor over every task: each task's constant predictor, weighted as `average` is."""
    if AVERAGE not in table.columns or any(t not in table.majority_cells for t in table.tasks):
        return
    cells = [table.majority_cells[t] for t in table.tasks]
    mean = statistics.fmean(c.mean for c in cells)
    corrects = [c.correct or {} for c in cells]  # a majority cell always has its per-doc correctness
    correct = {(t, doc): v for t, c in zip(table.tasks, corrects) for doc, v in c.items()}
    weights = {(t, doc): 1 / (len(cells) * len(c)) for t, c in zip(table.tasks, corrects) for doc in c}
    table.majority_cells[AVERAGE] = Cell(mean, None, None, len(correct), "none", [], [mean], constant=True, correct=correct, weights=weights)


def build_table(variants: list[Variant], samples=lambda run_id: None, tasks: list[str] | None = None, published=None, model=None) -> AccuracyTable:
    """variants (results.group_variants) → table; `samples(run_id)` gives a run's per-doc records."""
    tasks = tasks or list(dict.fromkeys(t for v in variants for t in v.runs))
    tasks = [t for t in tasks if any(t in v.runs for v in variants)]
    cells = {(v.label, t): _task_cell(v.runs[t], samples) for v in variants for t in tasks if t in v.runs}
    if len(tasks) > 1:
        for variant in variants:
            average = _average_cell(variant, tasks, cells)
            if average:
                cells[(variant.label, AVERAGE)] = average
    table = AccuracyTable(variants, tasks, cells, published=published or {}, model=model)
    _majority(table, samples)
    _average_majority(table)
    _significance(table)
    return table
