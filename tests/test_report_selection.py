"""Which runs a table shows: one row per config labelled by what differs, --where / --config-hash
filters on resolved params, the base reference of the same protocol, and paired comparisons."""

import pytest
import yaml
from scipy import stats

from adamole_bench.base.errors import UserError
from adamole_bench.base.paths import package_root
from adamole_bench.harness.report.compare import compare_rows, render_comparison
from adamole_bench.harness.report.results import check_single_model, group_variants, load_published, same_value, select_rows, variant_id
from adamole_bench.harness.report.table import build_table
from adamole_bench.tests.hand_runs import labels, right_on, run

GOLD = labels(30, 30)


@pytest.fixture
def store():
    """base once, lora under two learning rates and two ranks (2 seeds each), adamole, and a base of another protocol."""
    samples: dict[str, list[dict]] = {}
    rows = [run("base", "copa", 0, [0] * 60, GOLD, samples), run("base", "copa", 1, [0] * 60, GOLD, samples)]  # seed-independent
    for seed in (0, 1):
        rows.append(run("lora", "copa", seed, right_on(GOLD, 40 + seed), GOLD, samples, **{"train.lr": "0.0005", "method_config.rank": "8"}))
        rows.append(run("lora", "copa", seed, right_on(GOLD, 50 + seed), GOLD, samples, **{"train.lr": "0.003", "method_config.rank": "8"}))
    rows.append(run("lora", "copa", 0, right_on(GOLD, 55), GOLD, samples, **{"train.lr": "0.003", "method_config.rank": "32"}))
    rows.append(run("adamole", "copa", 0, right_on(GOLD, 45), GOLD, samples))
    rows.append(run("base", "copa", 0, [1] * 16, labels(8, 8), samples, **{"eval.limit": "16"}))
    return rows, samples


def test_each_config_is_its_own_row_labelled_by_what_differs(store):
    rows, samples = store
    variants = group_variants(select_rows(rows), order=["lora", "adamole"])
    assert [v.label for v in variants] == [
        "base (zero-shot, eval.limit=16)",
        "base (zero-shot, eval.limit=200)",
        "lora (lora.rank=32, train.lr=0.003)",
        "lora (lora.rank=8, train.lr=0.0005)",
        "lora (lora.rank=8, train.lr=0.003)",
        "adamole",
    ]
    assert [len(v.runs["copa"]) for v in variants] == [1, 1, 1, 2, 2, 1]  # an untrained model counts once, not per seed
    table = build_table(variants, samples.get)
    assert table.cells[("lora (lora.rank=8, train.lr=0.0005)", "copa")].mean == pytest.approx((40 + 41) / 120)
    assert table.cells[("lora (lora.rank=8, train.lr=0.003)", "copa")].mean == pytest.approx((50 + 51) / 120)
    assert set(table.run_ids()) == {r["run_id"] for r in rows} - {rows[1]["run_id"]}  # the second base seed adds nothing
    # Each row is tested against the base of its own protocol (eval.limit=200), never the 16-doc one.
    reference = table.reference_for(variants[2])
    assert reference is not None and reference.label == "base (zero-shot, eval.limit=200)"


def test_where_and_config_hash_pick_rows_and_keep_the_matching_base(store):
    rows, _ = store
    by_lr = select_rows(rows, where=["train.lr=3e-3"])  # numbers compare as numbers: 3e-3 is the stored "0.003"
    assert {(r["method"], r["params"].get("train.lr")) for r in by_lr} == {("lora", "0.003"), ("base", None)}
    assert {r["params"]["eval.limit"] for r in by_lr if r["method"] == "base"} == {"200"}  # the reference of their protocol
    by_rank = select_rows(rows, where=["lora.rank=8", "train.lr=0.003"], reference=False)  # the key=value spelling of overrides
    assert [(r["method"], r["seed"]) for r in by_rank] == [("lora", 0), ("lora", 1)]
    one = rows[-2]  # adamole
    assert [r["run_id"] for r in select_rows(rows, config_hashes=[one["config_hash"][:6]], reference=False)] == [one["run_id"]]
    assert {r["method"] for r in select_rows(rows, config_hashes=[variant_id(one["params"])])} == {"adamole", "base"}
    assert {r["method"] for r in select_rows(rows, methods=["adamole"], reference=False)} == {"adamole"}
    with pytest.raises(UserError, match=r"unknown --where setting 'train.lrr' \(did you mean 'train.lr'\?\)"):
        select_rows(rows, where=["train.lrr=1e-3"])
    with pytest.raises(UserError, match="--where takes key=value"):
        select_rows(rows, where=["train.lr"])


def test_value_matching():
    assert same_value("0.003", "3e-3") and same_value("8", "8.0") and same_value("None", "null") and same_value("True", "true")
    assert not same_value("0.003", "0.0031") and not same_value("letter", "cloze")
    with pytest.raises(UserError, match="several models"):
        check_single_model([{"model": "a"}, {"model": "b"}])


def test_compare_tests_per_column_and_over_runs(store):
    rows, samples = store
    variants = group_variants(select_rows(rows, where=["method_config.rank=8"], reference=False))
    table = build_table(variants, samples.get)
    slow, fast = variants
    result = compare_rows(table, fast, slow)
    (column,) = result.column_tests
    # Per doc, over both seeds: docs 41-50 are right in both fast seeds and at most one slow seed.
    assert (column.docs, column.better, column.worse) == (60, 11, 0)
    assert column.test is not None and column.test.p_docs is not None and column.test.p_seeds is not None
    assert column.test.p_seeds == pytest.approx(stats.ttest_ind([50 / 60, 51 / 60], [40 / 60, 41 / 60], equal_var=False).pvalue)
    assert column.p == max(column.test.p_docs, column.test.p_seeds)
    assert result.n == 2 and result.t_pvalue is None  # 2 (task, seed) pairs: too few for a run-level test
    text = render_comparison(result)
    assert "lora (train.lr=0.003) vs lora (train.lr=0.0005)" in text and "too small for run-level tests" in text


def test_run_level_tests_match_scipy():
    samples: dict[str, list[dict]] = {}
    accuracies = {"lora": [0.60, 0.64, 0.62], "adamole": [0.66, 0.65, 0.70]}
    rows = [
        run(m, "copa", s, right_on(labels(50, 50), round(a * 100)), labels(50, 50), samples)
        for m, values in accuracies.items()
        for s, a in enumerate(values)
    ]
    variants = group_variants(rows)
    table = build_table(variants, samples.get)
    result = compare_rows(table, variants[1], variants[0])  # adamole vs lora
    expected = stats.ttest_rel(accuracies["adamole"], accuracies["lora"])
    assert result.n == 3 and result.t_pvalue == pytest.approx(expected.pvalue)
    assert (result.wins, result.losses) == (3, 0) and result.sign_pvalue == pytest.approx(stats.binomtest(3, 3).pvalue)
    assert result.ci_low is not None and result.ci_high is not None
    assert result.ci_low < result.mean_difference < result.ci_high


def test_published_file_ships_empty_and_is_validated(tmp_path):
    assert load_published(package_root() / "results" / "published.yaml", None) == {}
    bad = tmp_path / "published.yaml"
    bad.write_text(yaml.safe_dump({"entries": [{"model": "m", "method": "lora", "task": "copa", "acc": 73.1, "source": "t1"}]}))
    with pytest.raises(UserError, match="fraction"):
        load_published(bad, None)
