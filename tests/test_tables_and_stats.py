"""Pure functions: table aggregation and rendering, the paired comparison, published numbers,
config layering and validation. Hand-made rows with known answers; no model, no MLflow."""

import statistics

import pytest
import yaml
from scipy import stats

from adamole_bench.harness.compare import compare_methods, render_comparison
from adamole_bench.harness.config import config_hash, load_config, trial_config
from adamole_bench.harness.errors import UserError
from adamole_bench.harness.paths import package_root
from adamole_bench.harness.plots import pareto_front
from adamole_bench.harness.report import (
    AVERAGE,
    accuracy_table,
    check_single_model,
    load_published,
    render_csv,
    render_html,
    render_latex,
    render_markdown,
    render_rich,
)

ACC = {  # (method, task) → accuracy per seed 0, 1, 2
    ("lora", "copa"): [0.60, 0.64, 0.62],
    ("lora", "boolq"): [0.70, 0.72, 0.71],
    ("adamole", "copa"): [0.66, 0.65, 0.70],
    ("adamole", "boolq"): [0.69, 0.70, 0.71],
}


def _rows(acc=ACC):
    return [{"method": m, "task": t, "seed": s, "acc": v, "model": "m"} for (m, t), values in acc.items() for s, v in enumerate(values)]


def test_cells_are_mean_and_sd_over_seeds_and_average_is_per_seed_task_mean():
    table = accuracy_table(_rows())
    assert table.columns == ["copa", "boolq", AVERAGE]
    assert table.cells[("lora", "copa")].mean == pytest.approx(0.62)
    assert table.cells[("lora", "copa")].spread == pytest.approx(statistics.stdev([0.60, 0.64, 0.62]))
    per_seed = [(0.66 + 0.69) / 2, (0.65 + 0.70) / 2, (0.70 + 0.71) / 2]
    assert table.cells[("adamole", AVERAGE)].mean == pytest.approx(statistics.fmean(per_seed))
    assert table.cells[("adamole", AVERAGE)].spread == pytest.approx(statistics.stdev(per_seed))
    assert table.best("copa") == {"adamole"} and table.best("boolq") == {"lora"} and table.best(AVERAGE) == {"adamole"}


def test_average_needs_the_same_seeds_on_every_task():
    table = accuracy_table(_rows({("lora", "copa"): [0.6, 0.7], ("lora", "boolq"): [0.8], ("base", "copa"): [0.5], ("base", "boolq"): [0.5]}))
    assert (("lora", AVERAGE) in table.cells) and table.cells[("lora", AVERAGE)].seeds == 1  # only seed 0 is shared
    table = accuracy_table(_rows({("lora", "copa"): [0.6, 0.7], ("base", "boolq"): [0.5]}))
    assert AVERAGE not in table.columns  # no method has every task


def test_every_format_marks_the_best_cell_and_shows_published_rows():
    table = accuracy_table(_rows(), published={("adamole", "copa"): 0.731})
    markdown = render_markdown(table)
    assert "| lora | 62.0 ± 2.0 | **71.0 ± 1.0** |" in markdown
    assert "| adamole (published) | 73.1 | – | – |" in markdown
    latex = render_latex(table)
    assert r"\textbf{67.0 $\pm$ 2.6}" in latex and "±" not in latex and r"adamole (published) & 73.1 & -- & --" in latex
    assert "<td><b>71.0 ± 1.0</b></td>" in render_html(table)
    csv_lines = render_csv(table).splitlines()
    assert csv_lines[0] == "method,column,mean,spread,seeds,best,source"
    assert any(line.startswith("lora,boolq,0.71") and ",3,True,measured" in line for line in csv_lines)
    assert csv_lines[-1] == "adamole,copa,0.731,,,False,published"


def test_rich_table_turns_tasks_into_rows_when_too_wide():
    from rich.console import Console

    table = accuracy_table(_rows())

    def header_and_labels(width):
        rich_table = render_rich(table, width=width)
        return [c.header for c in rich_table.columns], list(rich_table.columns[0].cells)

    assert header_and_labels(200) == (["method", "copa", "boolq", "average"], ["lora", "adamole"])
    header, labels = header_and_labels(45)
    assert header == ["task", "lora", "adamole"] and labels == ["copa", "boolq", "average"]
    console = Console(width=45, record=True)
    console.print(render_rich(table, width=45))
    assert "…" not in console.export_text()  # nothing truncated


def test_paired_comparison_matches_scipy_and_reports_small_n():
    result = compare_methods(_rows(), "adamole", "lora")
    a = [0.69, 0.70, 0.71, 0.66, 0.65, 0.70]  # pairs sorted by (task, seed): boolq, then copa
    b = [0.70, 0.72, 0.71, 0.60, 0.64, 0.62]
    expected = stats.ttest_rel(a, b)
    assert result.n == 6 and result.t_pvalue == pytest.approx(expected.pvalue)
    assert result.mean_difference == pytest.approx(statistics.fmean(x - y for x, y in zip(a, b)))
    assert (result.wins, result.losses) == (3, 2)  # boolq seed 2 is a tie, left out of the sign test
    assert result.sign_pvalue == pytest.approx(stats.binomtest(3, 5).pvalue)
    assert result.ci_low < result.mean_difference < result.ci_high
    assert "paired t-test" in render_comparison(result)

    tiny = compare_methods(_rows({("x", "copa"): [0.5, 0.6], ("y", "copa"): [0.4, 0.5]}), "x", "y")
    assert tiny.t_pvalue is None and "too small" in tiny.verdict()
    with pytest.raises(UserError, match="share no"):
        compare_methods(_rows({("x", "copa"): [0.5], ("y", "boolq"): [0.4]}), "x", "y")


def test_pareto_front_keeps_only_undominated_points():
    points = [(1.0, 50.0), (2.0, 60.0), (3.0, 55.0), (4.0, 70.0)]  # (cost, accuracy)
    assert pareto_front(points, cost_is_high=False) == [(1.0, 50.0), (2.0, 60.0), (4.0, 70.0)]
    assert pareto_front(points, cost_is_high=True) == [(4.0, 70.0)]  # e.g. tokens/s: more is better


def test_published_file_ships_empty_and_is_validated(tmp_path):
    assert load_published(package_root() / "results" / "published.yaml", None) == {}
    bad = tmp_path / "published.yaml"
    bad.write_text(yaml.safe_dump({"entries": [{"model": "m", "method": "lora", "task": "copa", "acc": 73.1, "source": "t1"}]}))
    with pytest.raises(UserError, match="fraction"):
        load_published(bad, None)
    with pytest.raises(UserError, match="several models"):
        check_single_model([{"model": "a"}, {"model": "b"}])


def test_config_layering_and_validation(tmp_path):
    reference = load_config(package_root() / "configs" / "adamole-reference.yaml", ["methods=[lora]"])
    assert (reference.model, reference.train.lr, reference.train.grad_accum, reference.train.loss_on) == ("meta-llama/Llama-2-7b-hf", 1e-4, 4, "full")
    smoke = load_config(package_root() / "configs" / "smoke.yaml", ["train.lr=0.5"], seeds=[7])
    assert smoke.train.lr == 0.5 and smoke.seeds == [7] and smoke.model == "tiny-llama"  # file ← flags ← key=value
    for override, message in (("train.lr=-1", "train.lr must be > 0"), ("train.lrr=1", "did you mean 'train.lr'"), ("tasks=[copx]", "unknown task")):
        with pytest.raises(UserError, match=message):
            load_config(package_root() / "configs" / "smoke.yaml", [override])
    (tmp_path / "bad.yaml").write_text("train: [1, 2\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_config(tmp_path / "bad.yaml")


def test_hash_covers_what_changes_results_and_nothing_else():
    base = load_config(None, [], model="tiny-llama", tasks=["fruit_or_color"])
    same = load_config(None, ["seeds=[5]", "experiment=other", "save_adapters=false"], model="tiny-llama", tasks=["fruit_or_color"])
    other = load_config(None, ["train.lr=1e-3"], model="tiny-llama", tasks=["fruit_or_color"])
    lora_hash = config_hash(trial_config(base, "lora", "fruit_or_color"))
    assert config_hash(trial_config(same, "lora", "fruit_or_color")) == lora_hash
    assert config_hash(trial_config(other, "lora", "fruit_or_color")) != lora_hash
    assert config_hash(trial_config(load_config(None, ["lora.rank=4"], model="tiny-llama"), "lora", "fruit_or_color")) != lora_hash
