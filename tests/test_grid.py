"""Grids: `key=v1,v2` and YAML `grid:` expand into validated grid points; a bad grid, a missing Ray or a
misplaced flag is one line (exit 2) before any work. The grid sweeps themselves run in test_ray_executor.py."""

import sys

import pytest
import yaml

from adamole_bench.base.errors import UserError
from adamole_bench.harness.run import sweep
from adamole_bench.harness.settings.load import load_config

BASE = {"model": "tiny-llama", "methods": ["lora", "adamole"], "tasks": ["fruit_or_color"], "seeds": [0, 1]}


def _plan(overrides, path=None, **flags):
    return sweep.plan(load_config(path, overrides, **{**BASE, **flags}))


def test_two_by_two_grid_plans_every_point_once_with_its_values():
    trials = _plan(["adamole.max_threshold=0.0625,0.25", "adamole.num_experts=2,4"])
    adamole = [t for t in trials if t.method == "adamole"]
    assert len(adamole) == 8  # 2 × 2 points × 2 seeds
    assert len({t.config_hash for t in adamole}) == 4
    assert {dict(t.grid)["adamole.max_threshold"] for t in adamole} == {0.0625, 0.25}
    assert {t.resolved["method_config"]["num_experts"] for t in adamole} == {2, 4}
    assert "adamole/fruit_or_color/seed1 (adamole.max_threshold=0.25, adamole.num_experts=4)" in [t.name for t in adamole]
    # lora and the base reference do not depend on adamole's options: planned once, without grid values
    assert [t.name for t in trials if t.method != "adamole"] == [
        "base/fruit_or_color/seed0",
        "lora/fruit_or_color/seed0",
        "lora/fruit_or_color/seed1",
    ]
    # a point reached by plain overrides is the same trial (same hash): skip-done works across both
    plain = _plan(["adamole.max_threshold=0.25", "adamole.num_experts=4"])
    assert {t.config_hash for t in plain if t.method == "adamole"} < {t.config_hash for t in adamole}


def test_a_trial_on_several_workers_is_another_trial_and_the_base_reference_is_not():
    """Each of N workers takes train.batch_size examples of every global batch (as under torchrun), so N is part
    of a trained trial's settings; one worker's hash is the one it always was."""
    one, two = _plan([]), _plan(["resources.workers_per_trial=2"])
    by_name = {t.name: t for t in one}
    for trial in two:
        alone = by_name[trial.name]
        if trial.method == "base":
            assert trial.config_hash == alone.config_hash and trial.resolved["train"] is None
        else:
            assert trial.resolved["train"] == {**alone.resolved["train"], "world_size": 2} and trial.config_hash != alone.config_hash
    assert all("world_size" not in (t.resolved["train"] or {}) for t in one)


def test_shards_split_grid_points():
    trials = _plan(["adamole.max_threshold=0.0625,0.25", "train.lr=1e-3,3e-3"])
    shards = [sweep.select_shard(trials, i, 3) for i in range(3)]
    assert sorted((t.config_hash, t.seed) for s in shards for t in s) == sorted((t.config_hash, t.seed) for t in trials)
    assert len({(t.config_hash, t.seed) for t in trials}) == len(trials) == 1 + 2 * 2 + 4 * 2  # lora sweeps lr only
    assert all(len(s) in (4, 5) for s in shards)


def test_list_settings_sweep_bracketed_values_and_stay_lists_otherwise(tmp_path):
    grid = _plan(["lora.target_modules=[q_proj,v_proj],[q_proj,k_proj,v_proj,o_proj]"], methods=["lora"], seeds=[0])
    assert [t.resolved["method_config"]["target_modules"] for t in grid if t.method == "lora"] == [
        ["q_proj", "v_proj"],
        ["q_proj", "k_proj", "v_proj", "o_proj"],
    ]
    assert grid[1].name == "lora/fruit_or_color/seed0 (lora.target_modules=[q_proj,v_proj])"
    single = _plan(["lora.target_modules=q_proj,v_proj"], methods=["lora"], seeds=[0])  # one list value, as before grids
    assert [t.resolved["method_config"]["target_modules"] for t in single if t.method == "lora"] == [["q_proj", "v_proj"]]
    config_file = tmp_path / "grid.yaml"
    config_file.write_text(yaml.safe_dump({"grid": {"lora.target_modules": [["q_proj"], ["v_proj"]], "train.lr": [1e-3, 3e-3]}}))
    from_yaml = [t for t in _plan([], config_file, methods=["lora"], seeds=[0]) if t.method == "lora"]
    assert [(t.resolved["method_config"]["target_modules"], t.resolved["train"]["lr"]) for t in from_yaml] == [
        (["q_proj"], 1e-3), (["q_proj"], 3e-3), (["v_proj"], 1e-3), (["v_proj"], 3e-3)]  # fmt: skip
    overridden = [t for t in _plan(["train.lr=1e-2"], config_file, methods=["lora"], seeds=[0]) if t.method == "lora"]
    assert {t.resolved["train"]["lr"] for t in overridden} == {1e-2} and len(overridden) == 2  # a plain CLI value beats the file's grid


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["adamole.max_threshold=0.1,,0.2"], "has an empty grid value (value 2)"),
        (["adamole.num_experts=4,0"], "grid point adamole.num_experts=0: invalid adamole option"),
        (["train.lr=1e-3,0.001"], "grid 'train.lr' lists 0.001 more than once"),
        (["lora.target_modules=[q_proj],v_proj"], "bracket every value, e.g. lora.target_modules=[q_proj,v_proj],"),
        (["mole.num_experts=2,4"], "'mole.num_experts' is swept but method 'mole' is not run"),
        (["train.lrr=1,2"], "unknown setting 'train.lrr' (did you mean 'train.lr'?)"),
        (["adamole.max_threshold=[0.1,0.2"], "opens a bracket it never closes"),
        (["train.lr=abc,1e-3"], "grid point train.lr=abc: invalid value 'abc' for 'train.lr'"),
        (["--executor", "dask"], "unknown executor 'dask'"),
        (["--ray-address", "auto"], "--ray-address applies to --executor ray only"),
        (["--config", "GRID_YAML"], "grid: 'train.lr' must list its values"),
    ],
)
def test_bad_grid_or_executor_is_one_line_before_any_work(cli, runs_dir, tmp_path, args, expected):
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("grid:\n  train.lr: 0.001\n")
    args = [str(bad_yaml) if a == "GRID_YAML" else a for a in args]
    result = cli("run", "--model", "tiny-llama", "--tasks", "fruit_or_color", "--methods", "lora,adamole", *args)
    assert result.exit_code == 2, result.output
    assert expected in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) <= 2  # one line (rich may wrap it once)
    assert not runs_dir.exists()  # no store opened, no run created


def test_executor_ray_without_ray_installed_is_one_line(cli, runs_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # what `import ray` finds when the extra is not installed
    result = cli("run", "--model", "tiny-llama", "--tasks", "fruit_or_color", "--executor", "ray")
    assert result.exit_code == 2, result.output
    assert 'needs Ray: pip install -e ".[ray]"' in result.output and "Traceback" not in result.output
    assert not runs_dir.exists()


def test_grid_section_must_name_sweepable_settings():
    with pytest.raises(UserError, match="cannot sweep 'model'"):
        _set_grid({"model": ["tiny-llama"]})
    with pytest.raises(UserError, match=r"each grid value is a list, e.g. lora.target_modules: \[\[q_proj, v_proj\]"):
        _set_grid({"lora.target_modules": ["q_proj", "v_proj"]})


def _set_grid(grid: dict):
    from adamole_bench.harness.settings.grid import grid_section

    grid_section(grid)


def test_mix_groups_are_one_ray_task_each_and_grid_points_split_them():
    from adamole_bench.harness.run.ray_executor import groups_of

    trials = sweep.plan(load_config(None, ["train.lr=1e-3,3e-3"], **{**BASE, "methods": ["lora"], "tasks": ["copa", "fruit_or_color"], "mix": True}))
    groups = [[t.name for _, t in group] for group in groups_of(trials)]
    assert groups[:2] == [["base/copa/seed0"], ["base/fruit_or_color/seed0"]]  # untrained references: one task each
    assert len(groups) == 2 + 2 * 2  # then one group per (lr, seed), holding both tasks
    assert all(len(g) == 2 and {n.split("/")[1] for n in g} == {"copa", "fruit_or_color"} for g in groups[2:])
    assert [i for group in groups_of(trials) for i, _ in group] == list(range(len(trials)))
