"""Report figures from hand-made runs: the legend says each row's seeds and interval kind, a doubling
sweep gets a log axis (an evenly spaced one does not), and every figure is a PNG with an SVG beside it."""

import xml.etree.ElementTree as ElementTree

import pytest

from adamole_bench.harness.report import sensitivity
from adamole_bench.harness.report.plots import accuracy_bars, accuracy_figure, log_spaced
from adamole_bench.harness.report.results import group_variants
from adamole_bench.harness.report.table import build_table
from adamole_bench.tests.hand_runs import labels, right_on, run

COPA = labels(32, 18)


def _table(rows, samples):
    return build_table(group_variants(rows), samples.get)


@pytest.fixture
def seeds_table():
    """base once (an untrained model scores the same for every seed), lora over 3 seeds far apart (60, 80, 90%)."""
    samples = {}
    rows = [run("base", "copa", 0, [0] * 50, COPA, samples)]
    rows += [run("lora", "copa", seed, right_on(COPA, right), COPA, samples) for seed, right in enumerate((30, 40, 45))]
    return _table(rows, samples)


def _sweep_table(values: list[str]):
    samples = {}
    rows = [run("base", "copa", 0, [0] * 50, COPA, samples)]
    for right, value in zip((30, 35, 40), values):
        rows.append(run("adamole", "copa", 0, right_on(COPA, right), COPA, samples, **{"method_config.max_threshold": value}))
    return _table(rows, samples)


def _legend(figure) -> list[str]:
    return [text.get_text() for axes in figure.axes if axes.get_legend() for text in axes.get_legend().get_texts()]


@pytest.mark.parametrize(
    ("values", "log"),
    [
        ([0.0625, 0.125, 0.25], True),  # the doubling sweep
        ([1e-4, 1e-3, 1e-2], True),
        ([4, 8, 16, 32], True),
        ([1, 10], True),  # spans a decade
        ([4, 8], False),  # two points: no ratio to be constant
        ([0.1, 0.2, 0.3], False),  # evenly spaced
        ([0, 1, 2], False),  # a log axis cannot hold 0
        ([-4, -2, -1], False),
    ],
)
def test_log_spaced(values, log):
    assert log_spaced(values) is log


def test_the_legend_names_seeds_and_interval_kind(seeds_table):
    assert seeds_table.cells[("lora", "copa")].interval == "t" and seeds_table.cells[("base (zero-shot)", "copa")].interval == "Wilson"
    assert sorted(_legend(accuracy_figure(seeds_table))) == [
        "base (zero-shot) (1 seed; Wilson over docs)",
        "lora (3 seeds; t over seeds)",
        "majority class",
    ]


@pytest.mark.parametrize(("values", "scale"), [(["0.0625", "0.125", "0.25"], "log"), (["0.1", "0.2", "0.3"], "linear")])
def test_a_doubling_sweep_gets_a_log_axis_with_its_values_as_ticks(values, scale):
    result = sensitivity.sensitivity(_sweep_table(values), "adamole.max_threshold")
    figure = sensitivity.figure(result)
    axes = figure.axes[0]
    assert axes.get_xscale() == scale
    assert [tick.get_text() for tick in axes.get_xticklabels()] == values
    assert "adamole (1 seed; Wilson over docs)" in _legend(figure)


def test_every_figure_is_a_png_and_an_svg_with_its_text_and_no_date(seeds_table, tmp_path):
    png, svg = accuracy_bars(seeds_table, tmp_path / "accuracy_bars.png")
    assert (png, svg) == (tmp_path / "accuracy_bars.png", tmp_path / "accuracy_bars.svg")
    assert png.read_bytes().startswith(b"\x89PNG")
    root = ElementTree.parse(svg).getroot()
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    texts = {"".join(node.itertext()) for node in root.iter("{http://www.w3.org/2000/svg}text")}
    assert "lora (3 seeds; t over seeds)" in texts  # text, not glyph outlines: editable in a paper
    first = svg.read_bytes()
    accuracy_bars(seeds_table, tmp_path / "accuracy_bars.png")
    assert svg.read_bytes() == first  # the same table gives the same file
    written = sensitivity.write(sensitivity.sensitivity(_sweep_table(["0.0625", "0.125", "0.25"]), "adamole.max_threshold"), tmp_path / "s")
    assert sorted(p.name for p in written) == sorted(f"adamole.max_threshold.{suffix}" for suffix in ("png", "svg", "md", "csv", "json"))
