"""Paired comparison of two table rows (two methods, or two configs of one method).

Per table column (each task, and the average over tasks): the difference and the table's own test
(a sign-flip test over per-doc correctness, exact McNemar with one seed per side, combined with a
t-test over seeds where both rows have several; docs/statistics.md). Over matched (task, seed)
runs: a paired t-test, an exact sign test and a bootstrap 95% CI of the mean difference, which
treat the run as the unit; below MIN_PAIRS pairs it says so.
"""

import statistics
from dataclasses import dataclass, field

import numpy as np
from scipy import stats

from ...base.errors import UserError
from .results import Variant, shared_implementation, untrained
from .stats import ALPHA
from .table import AVERAGE, AccuracyTable, Paired, paired_test

MIN_PAIRS = 3  # below this a t-test has too few degrees of freedom to mean anything
BOOTSTRAP_SAMPLES = 10000


@dataclass
class ColumnTest:
    """One table column (a task, or the average) of both rows, tested as the table tests it."""

    column: str
    a: float
    b: float
    docs: int  # docs both rows scored
    better: int  # docs where a is more often right than b
    worse: int
    test: Paired | None

    @property
    def p(self) -> float | None:
        return self.test.p if self.test else None


@dataclass
class Comparison:
    label_a: str
    label_b: str
    pairs: list[tuple[str, int, float, float]]  # (task, seed, a, b)
    unmatched: int  # runs of a or b without a partner
    mean_difference: float  # mean of a - b over the pairs
    column_tests: list[ColumnTest] = field(default_factory=list)
    t_statistic: float | None = None
    t_pvalue: float | None = None
    sign_pvalue: float | None = None
    wins: int = 0  # pairs where a > b
    losses: int = 0
    ci_low: float | None = None
    ci_high: float | None = None

    @property
    def n(self) -> int:
        return len(self.pairs)

    def verdict(self) -> str:
        tested = [t for t in self.column_tests if t.p is not None]
        overall = next((t for t in tested if t.column == AVERAGE), tested[0] if len(tested) == 1 else None)
        if overall is not None:
            where = "averaged over tasks" if overall.column == AVERAGE else f"on {overall.column}"
            assert overall.p is not None  # `tested` keeps columns with a p
            if overall.p < ALPHA:
                better = self.label_a if overall.a > overall.b else self.label_b
                return f"{better} is better {where} (p = {overall.p:.3g} < {ALPHA:g})"
            return f"no significant difference {where} (p = {overall.p:.3g} ≥ {ALPHA:g})"
        if self.n < MIN_PAIRS:
            return f"no per-doc samples to test, and n = {self.n} matched (task, seed) pairs is too small for a run-level test (at least {MIN_PAIRS})"
        if self.t_pvalue is None:
            return f"every pair differs by exactly {self.mean_difference * 100:+.2f} points; no variance to test"
        better = self.label_a if self.mean_difference > 0 else self.label_b
        if self.t_pvalue < ALPHA:
            return f"{better} is better (paired t-test over runs, p = {self.t_pvalue:.3g} < {ALPHA:g})"
        return f"no significant difference (paired t-test over runs, p = {self.t_pvalue:.3g} ≥ {ALPHA:g}, n = {self.n})"


def _run_pairs(a: Variant, b: Variant, metric: str) -> tuple[list[tuple[str, int, float, float]], int]:
    """(task, seed) pairs; an untrained row has one run per task, the partner of every seed."""
    pairs, unmatched = [], 0
    for task in sorted(a.runs.keys() | b.runs.keys()):
        runs_a, runs_b = a.runs.get(task, []), b.runs.get(task, [])
        if not runs_a or not runs_b:
            unmatched += len(runs_a) + len(runs_b)
            continue
        by_seed_a, by_seed_b = {r["seed"]: r for r in runs_a}, {r["seed"]: r for r in runs_b}
        if untrained(b.params):
            by_seed_b = {seed: runs_b[0] for seed in by_seed_a}
        if untrained(a.params):
            by_seed_a = {seed: runs_a[0] for seed in by_seed_b}
        seeds = sorted(by_seed_a.keys() & by_seed_b.keys())
        unmatched += len(by_seed_a.keys() - by_seed_b.keys()) + len(by_seed_b.keys() - by_seed_a.keys())
        pairs += [(task, s, by_seed_a[s][metric], by_seed_b[s][metric]) for s in seeds]
    return pairs, unmatched


def compare_rows(table: AccuracyTable, a: Variant, b: Variant, metric: str = "acc", seed: int = 0) -> Comparison:
    """Doc-level tests per table column, then run-level tests over matched (task, seed) pairs."""
    pairs, unmatched = _run_pairs(a, b, metric)
    diffs = np.array([x - y for _, _, x, y in pairs])
    result = Comparison(a.label, b.label, pairs, unmatched, float(diffs.mean()) if len(diffs) else float("nan"),
                        wins=int((diffs > 0).sum()), losses=int((diffs < 0).sum()))  # fmt: skip
    for column in table.columns:
        cell_a, cell_b = table.cells.get((a.label, column)), table.cells.get((b.label, column))
        if cell_a is None or cell_b is None:
            continue
        correct_a, correct_b = cell_a.correct or {}, cell_b.correct or {}
        common = correct_a.keys() & correct_b.keys()
        better = sum(correct_a[k] > correct_b[k] for k in common)
        worse = sum(correct_a[k] < correct_b[k] for k in common)
        result.column_tests.append(ColumnTest(column, cell_a.mean, cell_b.mean, len(common), better, worse, paired_test(cell_a, cell_b)))
    if result.n < MIN_PAIRS:
        return result
    if statistics.pstdev(diffs) > 0:
        t = stats.ttest_rel([p[2] for p in pairs], [p[3] for p in pairs])
        result.t_statistic, result.t_pvalue = float(t.statistic), float(t.pvalue)
    if result.wins + result.losses:
        result.sign_pvalue = float(stats.binomtest(result.wins, result.wins + result.losses, 0.5).pvalue)
    rng = np.random.default_rng(seed)
    means = diffs[rng.integers(0, len(diffs), size=(BOOTSTRAP_SAMPLES, len(diffs)))].mean(axis=1)
    result.ci_low, result.ci_high = (float(x) for x in np.percentile(means, [2.5, 97.5]))
    return result


def compare_methods(table: AccuracyTable, method_a: str, method_b: str) -> list[Comparison]:
    """Every config of a against every config of b computed by the same shared code and packages (only the
    methods' own code differs); a method against itself: each pair of its configs, old code against new included."""
    rows = {name: [v for v in table.variants if v.method == name] for name in (method_a, method_b)}
    for name, found in rows.items():
        if not found:
            raise UserError(f"no finished runs of method '{name}' match (check the name, --model, --where and --experiment)")
    if method_a == method_b:
        pairs = [(a, b) for i, a in enumerate(rows[method_a]) for b in rows[method_a][i + 1 :]]
    else:
        pairs = [
            (a, b)
            for a in rows[method_a]
            for b in rows[method_b]
            if shared_implementation(a.implementation) == shared_implementation(b.implementation)
        ]
        if not pairs:
            raise UserError(
                f"no run of '{method_a}' shares its harness code and package releases with one of '{method_b}'; rerun one of them with this code, or pass --current-code"
            )
    if not pairs:
        raise UserError(f"'{method_a}' has a single config here; compare it with another method, or run a second config")
    return [compare_rows(table, a, b) for a, b in pairs]


def _p_text(test: Paired) -> str:
    parts = [f"docs p = {test.p_docs:.4g}" if test.p_docs is not None else "", f"seeds p = {test.p_seeds:.4g}" if test.p_seeds is not None else ""]
    return f"p = {test.p:.4g} ({', '.join(filter(None, parts))})"


def render_comparison(result: Comparison) -> str:
    """Plain text (works in a terminal, a CI log and Markdown)."""
    a, b = result.label_a, result.label_b
    lines = [f"{a} vs {b}"]
    for test in result.column_tests:
        p = "untested (no per-doc samples)" if test.test is None else _p_text(test.test)
        lines.append(
            f"  {test.column}: {test.a * 100:.1f} vs {test.b * 100:.1f} ({(test.a - test.b) * 100:+.1f} points); "
            f"{test.docs} paired docs, {a} better on {test.better}, worse on {test.worse}; {p}"
        )
    lines.append(f"runs: {result.n} matched (task, seed) pairs" + (f", {result.unmatched} unmatched runs ignored" if result.unmatched else ""))
    if result.n:
        lines.append(
            f"  mean difference ({a} − {b}): {result.mean_difference * 100:+.2f} points; {a} wins {result.wins}, loses {result.losses}, ties {result.n - result.wins - result.losses}"
        )
    if result.t_pvalue is not None:
        lines.append(f"  paired t-test: t = {result.t_statistic:.3f}, p = {result.t_pvalue:.4g}")
    if result.sign_pvalue is not None:
        lines.append(f"  sign test (exact binomial over non-tied pairs): p = {result.sign_pvalue:.4g}")
    if result.ci_low is not None and result.ci_high is not None:
        lines.append(f"  bootstrap 95% CI of the mean difference: [{result.ci_low * 100:+.2f}, {result.ci_high * 100:+.2f}] points")
    elif result.n < MIN_PAIRS:
        lines.append(f"  n = {result.n} pairs is too small for run-level tests (at least {MIN_PAIRS}; run more seeds)")
    lines.append(f"verdict: {result.verdict()}")
    return "\n".join(lines) + "\n"
