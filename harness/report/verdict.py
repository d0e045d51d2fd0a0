"""The verdict under a table: which differences are significant, and the command that buys power."""

from .stats import ALPHA, wilson_interval
from .table import AccuracyTable


def verdict(table: AccuracyTable) -> list[str]:
    """One line per column (which differences are significant), then what would buy more power."""
    lines = []
    for column in table.columns:
        present = [(v, table.cells[(v.label, column)]) for v in table.variants if (v.label, column) in table.cells]
        docs = sorted({c.docs for _, c in present if c.docs})
        n = f"n={docs[0]}" if len(docs) == 1 else f"n={docs[0]}-{docs[-1]}" if docs else "n=?"
        tested = [(v, c, test) for v, c in present if (test := c.p_base) is not None]
        parts = []
        for v, c, test in tested:
            if test.p < ALPHA:
                reference = table.reference_for(v)
                assert reference is not None  # p_base is set only against a reference row
                base = table.cells[(reference.label, column)]
                parts.append(f"{v.label} {(c.mean - base.mean) * 100:+.1f} points vs base (p={test.p:.2g})")
        if tested and not parts:
            v, c, test = min(tested, key=lambda vct: vct[2].p)
            parts.append(f"no method differs significantly from base (smallest p={test.p:.2g}, {v.label})")
        elif not tested and any(not v.reference for v, _ in present):
            parts.append("no base reference with per-doc samples to test against")
        parts += _against_majority(table, column, present)
        bold = [v.label for v, c in present if c.bold]
        if bold:
            parts.append(f"{bold[0]} is significantly better than every other row and the majority class")
        elif len(present) > 1:
            parts.append("no row is significantly better than all others")
        collapsed = [f"{v.label} answers {c.top_answer} on {c.top_share:.0%} of docs" for v, c in present if c.collapsed]
        if collapsed:
            parts.append("collapsed predictors: " + ", ".join(collapsed))
        lines.append(f"{column} ({n}): " + "; ".join(parts or ["only one row"]))
    return lines + _more_power(table)


def _against_majority(table: AccuracyTable, column: str, present: list) -> list[str]:
    """Beating a letter-biased base is easy; beating "always the majority answer" is learning the task."""
    majority = table.majority_cells.get(column)
    trained = [(v, c) for v, c in present if not c.constant and c.p_majority is not None]
    if majority is None or not trained:
        return []
    answer = f"always {table.majority[column][0]}" if column in table.majority else "the majority answers"
    above = [f"{v.label} +{(c.mean - majority.mean) * 100:.1f} (p={c.p_majority.p:.2g})" for v, c in trained if c.beats(majority, c.p_majority)]
    if above:
        return [f"better than {answer} ({majority.mean:.1%}): " + ", ".join(above)]
    v, c = max(trained, key=lambda vc: vc[1].mean)
    line = f"no method is significantly better than {answer} ({majority.mean:.1%}; best {v.label}, {c.mean:.1%}, p={c.p_majority.p:.2g})"
    if any(c.p_base is not None and (ref := table.reference_for(v)) and c.beats(table.cells[(ref.label, column)], c.p_base) for v, c in trained):
        line += ": the gains over base are the label prior, not the task"
    return [line]


def _more_power(table: AccuracyTable) -> list[str]:
    trained = [(v, t, c) for v in table.variants if not v.reference for t in table.tasks if (c := table.cells.get((v.label, t))) and c.docs]
    advice = []
    if trained and max(c.seeds for _, _, c in trained) < 3:
        advice.append("more seeds: --seeds 0,1,2 (finished trials are skipped)")
    limited = {t: c.docs for v, t, c in trained if v.params.get("eval.limit") == str(c.docs)}
    if limited:
        advice.append(f"whole eval splits: eval.limit=null (now {', '.join(f'{t}: first {n} docs' for t, n in limited.items())})")
    small = {}
    for v, t, c in trained:
        limit = v.params.get("eval.limit", "None")
        assert c.docs is not None  # `trained` keeps cells with docs
        low, high = wilson_interval(0.5, c.docs)
        if (limit == "None" or int(float(limit)) > c.docs) and (high - low) / 2 > 0.05:
            small[t] = (c.docs, (high - low) / 2)
    for task, (docs, half) in small.items():
        advice.append(
            f"{task} has only {docs} eval docs here (95% CI ±{half * 100:.1f} points): more data via --data-dir DIR or ADAMOLE_BENCH_ONLINE=1"
        )
    return ["more power: " + "; ".join(advice)] if advice else []
