"""Tables from hand-made runs with known per-doc answers: intervals, n, paired tests against base and
the best row, collapsed predictors, bold only where a test supports it, every format, the verdict."""

import csv
import io
import json
import math

import pytest
from scipy import stats

from adamole_bench.harness.report.plots import pareto_front
from adamole_bench.harness.report.render import render_csv, render_html, render_json, render_latex, render_markdown, render_rich
from adamole_bench.harness.report.results import group_variants
from adamole_bench.harness.report.stats import normal_interval, t_interval, wilson_interval
from adamole_bench.harness.report.table import AVERAGE, build_table
from adamole_bench.harness.report.verdict import verdict
from adamole_bench.tests.hand_runs import labels, right_on, run

COPA = labels(32, 18)  # the offline COPA eval set: 50 docs, 64% "A"


def _table(rows, samples, **kwargs):
    return build_table(group_variants(rows), samples.get, **kwargs)


@pytest.fixture
def copa_table():
    """base always answers A (64%), adamole always B (36%), lora gets the first 45 docs right (90%)."""
    samples: dict[str, list[dict]] = {}
    rows = [
        run("base", "copa", 0, [0] * 50, COPA, samples),
        run("adamole", "copa", 0, [1] * 50, COPA, samples),
        run("lora", "copa", 0, right_on(COPA, 45), COPA, samples),
    ]
    return _table(rows, samples)


def test_one_seed_cells_have_a_wilson_interval_n_and_exact_mcnemar_tests(copa_table):
    base, adamole, lora = (copa_table.cells[(label, "copa")] for label in ("base (zero-shot)", "adamole", "lora"))
    assert (lora.mean, lora.docs, lora.seeds, lora.interval) == (0.9, 50, 1, "Wilson")
    assert (lora.low, lora.high) == pytest.approx((0.7864, 0.9565), abs=1e-4)  # by hand, see test_stats
    # lora is right where base is wrong on docs 32-44 and never the other way round: 13 vs 0 discordant docs.
    assert lora.p_base.p == pytest.approx(stats.binomtest(13, 13).pvalue) == pytest.approx(2 * 0.5**13)
    # Always-B against always-A: every doc is discordant, 18 for adamole and 32 for base: p = 0.065, not significant.
    assert adamole.p_base.p == pytest.approx(stats.binomtest(18, 50).pvalue) and adamole.p_base.p > 0.05
    assert adamole.p_base.p_seeds is None  # one trained seed: its seed-to-seed spread is unknown
    # lora is the best and beats every other row (adamole: 32 vs 5 discordant docs), so it is bold.
    assert lora.best and lora.bold and adamole.p_best.p == pytest.approx(stats.binomtest(5, 37).pvalue)
    assert (base.top_answer, base.top_share, adamole.top_answer, adamole.collapsed, lora.collapsed) == ("A", 1.0, "B", True, False)
    assert copa_table.majority["copa"] == ("A", 0.64, 50)
    assert adamole.flags() == ["always B", "n.s. vs base", "n.s. vs majority"]  # 18 vs 32 docs against always-A
    assert lora.p_majority.p == pytest.approx(2 * 0.5**13) and base.p_majority is None  # base is untrained: no test
    # No method beats base except lora, and lora also beats always-A: no "label prior" remark.
    assert "better than always A (64.0%): lora +26.0" in verdict(copa_table)[0] and "label prior" not in verdict(copa_table)[0]


def test_beating_a_letter_biased_base_is_not_beating_the_majority_class():
    """BoolQ as the default CPU run saw it: base always answers A (30 of 100 labels), a collapsed
    adapter answers B on 99 docs. It beats base by 39 points (69 vs 30 discordant docs) and is no
    better than the constant majority predictor, so it is not bold and the verdict says it learned the prior."""
    gold = labels(30, 70)
    samples: dict[str, list[dict]] = {}
    rows = [run("base", "boolq", 0, [0] * 100, gold, samples), run("mole", "boolq", 0, [1] * 99 + [0], gold, samples)]
    table = _table(rows, samples)
    mole = table.cells[("mole", "boolq")]
    assert mole.p_base.p == pytest.approx(stats.binomtest(30, 99).pvalue) and mole.p_base.p < 0.001
    assert mole.best and not mole.bold
    # Against always-B: mole differs only on doc 99 (labelled B, answered A): 0 vs 1 discordant docs.
    assert mole.p_majority.p == pytest.approx(1.0) and "n.s. vs majority" in mole.flags()
    line = verdict(table)[0]
    assert "mole +39.0 points vs base" in line and "no method is significantly better than always B (70.0%; best mole, 69.0%, p=1)" in line
    assert "the gains over base are the label prior" in line and "is significantly better than every other row" not in line
    csv_row = next(r for r in csv.DictReader(io.StringIO(render_csv(table))) if r["row"] == "mole")
    assert float(csv_row["p_vs_majority"]) == pytest.approx(1.0) and csv_row["bold"] == "False"

    # A method right on the first 95 docs is above the prior: right on the 30 A docs always-B misses,
    # wrong on 5 B docs it gets: 30 vs 5 discordant docs.
    rows.append(run("adamole", "boolq", 0, right_on(gold, 95), gold, samples))
    table = _table(rows, samples)
    adamole = table.cells[("adamole", "boolq")]
    assert adamole.p_majority.p == pytest.approx(stats.binomtest(5, 35).pvalue) and adamole.bold
    line = verdict(table)[0]
    assert "better than always B (70.0%): adamole +25.0" in line and "label prior" not in line


def test_no_bold_winner_without_a_significant_test():
    samples: dict[str, list[dict]] = {}
    rows = [run("base", "copa", 0, [0] * 50, COPA, samples), run("lora", "copa", 0, right_on(COPA, 34), COPA, samples)]
    table = _table(rows, samples)
    lora = table.cells[("lora", "copa")]
    assert lora.best and not lora.bold and lora.p_base.p == pytest.approx(stats.binomtest(2, 2).pvalue)  # 68% vs 64%: 2 docs
    assert "n.s. vs base" in lora.flags() and "n.s. vs best" in table.cells[("base (zero-shot)", "copa")].flags()


def test_several_seeds_use_a_t_interval_and_test_over_docs_and_seeds():
    samples: dict[str, list[dict]] = {}
    rows = [run("base", "copa", 0, [0] * 50, COPA, samples)]
    rows += [run("lora", "copa", seed, right_on(COPA, right), COPA, samples) for seed, right in enumerate((40, 43, 45))]
    rows += [run("adamole", "copa", seed, [1] * 50, COPA, samples) for seed in (0, 1)]
    table = _table(rows, samples)
    lora, adamole = table.cells[("lora", "copa")], table.cells[("adamole", "copa")]
    accuracies = [0.80, 0.86, 0.90]
    assert lora.seeds == 3 and lora.interval == "t" and (lora.low, lora.high) == pytest.approx(t_interval(accuracies))
    assert lora.n_text() == "n=50, 3 seeds"
    # Over seeds: a one-sample t-test against the untrained base's fixed score; the reported p is the larger one.
    assert lora.p_base.p_seeds == pytest.approx(stats.ttest_1samp(accuracies, 0.64).pvalue)
    assert lora.p_base.p == max(lora.p_base.p_docs, lora.p_base.p_seeds)
    # Docs 32-39 gain a full point on every seed, 40-44 on some: per-doc mean differences in thirds, all positive.
    assert lora.p_base.p_docs == pytest.approx(2 * 0.5**13)
    # Two identical always-B seeds: a zero-width t-interval would claim certainty; the docs' Wilson interval stays.
    assert adamole.interval == "Wilson" and (adamole.low, adamole.high) == pytest.approx(wilson_interval(0.36, 50))


def test_average_column_pools_task_variances_and_needs_every_task():
    samples: dict[str, list[dict]] = {}
    boolq = labels(60, 40)
    rows = [
        run("base", "copa", 0, [0] * 50, COPA, samples),
        run("base", "boolq", 0, [0] * 100, boolq, samples),
        run("lora", "copa", 0, right_on(COPA, 45), COPA, samples),
        run("lora", "boolq", 0, right_on(boolq, 70), boolq, samples),
        run("mole", "copa", 0, right_on(COPA, 30), COPA, samples),
    ]
    table = _table(rows, samples, tasks=["copa", "boolq"])
    assert table.columns == ["copa", "boolq", AVERAGE] and ("mole", AVERAGE) not in table.cells
    average = table.cells[("lora", AVERAGE)]
    variance = (0.9 * 0.1 / 50 + 0.7 * 0.3 / 100) / 4  # independent tasks: Var((p1 + p2) / 2)
    assert (average.mean, average.docs, average.interval) == (pytest.approx(0.8), 150, "normal")
    assert (average.low, average.high) == pytest.approx(normal_interval(0.8, variance))
    assert average.p_base.p < 0.001  # +26 and +10 points, every discordant doc in lora's favour
    # Always the majority answer of each task (A on both): (64% + 60%) / 2, tested with the same weights.
    assert table.majority_cells[AVERAGE].mean == pytest.approx(0.62)
    assert average.p_majority.p < 0.001 and average.p_majority.p_docs == average.p_majority.p  # 13 + 10 docs, all lora's


def test_every_format_shows_interval_n_flags_and_p_values(copa_table):
    markdown = render_markdown(copa_table)
    assert "| lora | **90.0 [78.6, 95.7]**; n=50 |" in markdown
    assert "| adamole | 36.0 [24.1, 49.9]; n=50; always B; n.s. vs base; n.s. vs majority |" in markdown
    assert "| majority class | 64.0 (A); n=50 |" in markdown and "verdict:" in markdown
    latex = render_latex(copa_table)
    assert r"\textbf{90.0 [78.6, 95.7]}; n=50 \\" in latex and "≥" not in latex and r"$\geq$" in latex
    assert "<td><b>90.0 [78.6, 95.7]</b><br>n=50</td>" in render_html(copa_table)
    records = {(r["row"], r["column"]): r for r in csv.DictReader(io.StringIO(render_csv(copa_table)))}
    lora = records[("lora", "copa")]
    assert float(lora["p_vs_base"]) == pytest.approx(2 * 0.5**13) and lora["base_row"] == "base (zero-shot)"
    assert (lora["docs"], lora["bold"], lora["interval"], float(lora["ci_low"])) == ("50", "True", "Wilson", pytest.approx(0.7864, abs=1e-4))
    assert records[("adamole", "copa")]["top_share"] == "1.0" and records[("adamole", "copa")]["collapsed"] == "True"
    document = json.loads(render_json(copa_table))
    cells = {(c["row"], c["column"]): c for c in document["cells"]}
    assert cells[("adamole", "copa")]["p_vs_best"] == pytest.approx(stats.binomtest(5, 37).pvalue)
    assert document["majority"]["copa"] == {"answer": "A", "rate": 0.64, "docs": 50}
    assert [r["label"] for r in document["rows"]] == ["base (zero-shot)", "adamole", "lora"]


def test_verdict_says_what_is_significant_and_how_to_get_power(copa_table):
    lines = verdict(copa_table)
    assert lines[0].startswith("copa (n=50): lora +26.0 points vs base (p=0.00024)")
    assert "lora is significantly better than every other row" in lines[0]
    assert "collapsed predictors: base (zero-shot) answers A on 100% of docs, adamole answers B on 100% of docs" in lines[0]
    assert "--seeds 0,1,2" in lines[1] and "copa has only 50 eval docs here (95% CI ±13.4 points)" in lines[1]
    assert "--data-dir DIR or ADAMOLE_BENCH_ONLINE=1" in lines[1] and "eval.limit=null" not in lines[1]  # 50 < eval.limit 200


def test_verdict_suggests_whole_splits_when_the_limit_binds():
    samples: dict[str, list[dict]] = {}
    gold = labels(100, 100)
    rows = [run("base", "boolq", 0, [0] * 200, gold, samples), run("lora", "boolq", 0, right_on(gold, 150), gold, samples)]
    (power,) = verdict(_table(rows, samples))[1:]
    assert "eval.limit=null (now boolq: first 200 docs)" in power


def test_rich_table_fits_80_columns_and_transposes_when_too_wide():
    from rich.console import Console

    samples: dict[str, list[dict]] = {}
    tasks = ("copa", "boolq", "piqa", "siqa", "arc_easy")
    rows = [run(m, t, 0, right_on(COPA, 30 + i), COPA, samples) for i, m in enumerate(("base", "lora")) for t in tasks]
    table = _table(rows, samples)
    assert [c.header for c in render_rich(table, width=200).columns] == ["method", *tasks, "average"]
    narrow = render_rich(table, width=80)
    assert [c.header for c in narrow.columns] == ["task", "base (zero-shot)", "lora", "majority class"]
    assert [str(c) for c in narrow.columns[0].cells] == [*tasks, "average"]  # rich Text: str is its plain text
    console = Console(width=80, record=True)
    console.print(narrow)
    text = console.export_text()
    assert "…" not in text and max(map(len, text.splitlines())) <= 80 and "[46.2, 72.4]" in text


def test_published_rows_and_untested_cells():
    samples: dict[str, list[dict]] = {}
    rows = [run("lora", "copa", 0, right_on(COPA, 45), COPA, samples)]
    del samples[rows[0]["run_id"]]  # a run logged before per-doc samples existed
    table = _table(rows, samples, published={("adamole", "copa"): 0.731})
    assert "| adamole (published) | 73.1 |" in render_markdown(table)
    assert table.cells[("lora", "copa")].flags() == ["untested (no per-doc samples)"]
    assert table.majority == {}


def test_pareto_front_keeps_only_undominated_points():
    points = [(1.0, 50.0), (2.0, 60.0), (3.0, 55.0), (4.0, 70.0)]  # (cost, accuracy)
    assert pareto_front(points, cost_is_high=False) == [(1.0, 50.0), (2.0, 60.0), (4.0, 70.0)]
    assert pareto_front(points, cost_is_high=True) == [(4.0, 70.0)]  # e.g. tokens/s: more is better
    assert math.isclose(wilson_interval(0.5, 50)[1] - 0.5, 0.1336, abs_tol=1e-4)  # the ±13.4 the verdict quotes
