"""Paired comparison of two methods: matched (task, seed) pairs, so task difficulty and seed
luck cancel out and only the method difference remains.

Reports the mean difference, a paired t-test, an exact sign test and a bootstrap 95% CI of the
mean difference; with fewer than MIN_PAIRS pairs it says so instead of pretending to test.
"""

import statistics
from dataclasses import dataclass

import numpy as np
from scipy import stats

from .errors import UserError

MIN_PAIRS = 3  # below this a t-test has too few degrees of freedom to mean anything
BOOTSTRAP_SAMPLES = 10000


@dataclass
class Comparison:
    method_a: str
    method_b: str
    pairs: list[tuple[str, int, float, float]]  # (task, seed, a, b)
    unmatched: int  # runs of a or b without a partner
    mean_difference: float  # mean of a - b
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

    def verdict(self, alpha: float = 0.05) -> str:
        if self.n < MIN_PAIRS:
            return f"n = {self.n} matched (task, seed) pairs is too small to test; run more seeds (at least {MIN_PAIRS} pairs)"
        if self.t_pvalue is None:
            return f"every pair differs by exactly {self.mean_difference * 100:+.2f} points; no variance to test"
        better = self.method_a if self.mean_difference > 0 else self.method_b
        if self.t_pvalue < alpha:
            return f"{better} is better (paired t-test p = {self.t_pvalue:.3g} < {alpha})"
        return f"no significant difference (paired t-test p = {self.t_pvalue:.3g} ≥ {alpha}, n = {self.n})"


def compare_methods(rows: list[dict], method_a: str, method_b: str, metric: str = "acc", seed: int = 0) -> Comparison:
    """Pair `rows` (as from rows_from_mlflow) of two methods on equal (task, seed)."""
    if method_a == method_b:
        raise UserError("compare needs two different methods")
    runs = {name: {(r["task"], r["seed"]): r[metric] for r in rows if r["method"] == name} for name in (method_a, method_b)}
    for name, found in runs.items():
        if not found:
            raise UserError(f"no finished runs of method '{name}' (check the name, --model and --experiment)")
    keys = sorted(runs[method_a].keys() & runs[method_b].keys())
    if not keys:
        raise UserError(f"'{method_a}' and '{method_b}' share no (task, seed); run both on the same tasks and seeds")
    pairs = [(task, s, runs[method_a][(task, s)], runs[method_b][(task, s)]) for task, s in keys]
    unmatched = len(runs[method_a]) + len(runs[method_b]) - 2 * len(keys)
    diffs = np.array([a - b for _, _, a, b in pairs])
    result = Comparison(method_a, method_b, pairs, unmatched, float(diffs.mean()), wins=int((diffs > 0).sum()), losses=int((diffs < 0).sum()))
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


def render_comparison(result: Comparison) -> str:
    """Plain text (works in a terminal, a CI log and Markdown)."""
    a, b = result.method_a, result.method_b
    lines = [f"{a} vs {b}: {result.n} matched (task, seed) pairs" + (f", {result.unmatched} unmatched runs ignored" if result.unmatched else "")]
    lines.append(f"mean difference ({a} − {b}): {result.mean_difference * 100:+.2f} points; {a} wins {result.wins}, loses {result.losses}, ties {result.n - result.wins - result.losses}")
    if result.t_pvalue is not None:
        lines.append(f"paired t-test: t = {result.t_statistic:.3f}, p = {result.t_pvalue:.4g}")
    if result.sign_pvalue is not None:
        lines.append(f"sign test (exact binomial over non-tied pairs): p = {result.sign_pvalue:.4g}")
    if result.ci_low is not None:
        lines.append(f"bootstrap 95% CI of the mean difference: [{result.ci_low * 100:+.2f}, {result.ci_high * 100:+.2f}] points")
    lines.append(f"verdict: {result.verdict()}")
    return "\n".join(lines) + "\n"
