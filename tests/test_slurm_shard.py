"""`--shard` from a SLURM array's own variables: 0- and 1-based arrays, stepped arrays, and lists refused."""

import pytest

from adamole_bench.base.errors import UserError
from adamole_bench.harness.run.sweep import select_shard, slurm_array_shard


def _array(first: int, last: int, step: int = 1) -> list[dict[str, str]]:
    """The environment SLURM gives each task of `--array=first-last:step`."""
    ids = list(range(first, last + 1, step))
    common = {"SLURM_ARRAY_TASK_MIN": str(first), "SLURM_ARRAY_TASK_MAX": str(ids[-1]), "SLURM_ARRAY_TASK_COUNT": str(len(ids))}
    if step != 1:
        common["SLURM_ARRAY_TASK_STEP"] = str(step)
    return [{**common, "SLURM_ARRAY_TASK_ID": str(task)} for task in ids]


@pytest.mark.parametrize(("first", "last", "step"), [(0, 7, 1), (1, 8, 1), (5, 12, 1), (0, 14, 2), (3, 24, 3)])
def test_every_task_of_an_array_gets_its_own_slice_and_together_they_cover_the_plan(first, last, step):
    tasks = _array(first, last, step)
    shards = [slurm_array_shard(env) for env in tasks]
    assert shards == [(i, len(tasks)) for i in range(len(tasks))]
    plan = list(range(29))  # stands in for the trials: select_shard only slices
    slices = [select_shard(plan, *shard) for shard in shards if shard is not None]  # all are, as asserted above
    assert sorted(x for part in slices for x in part) == plan


def test_outside_an_array_there_is_no_slice():
    assert slurm_array_shard({"SLURM_JOB_ID": "42"}) is None


@pytest.mark.parametrize(
    "env",
    [
        {"SLURM_ARRAY_TASK_ID": "9", "SLURM_ARRAY_TASK_MIN": "1", "SLURM_ARRAY_TASK_MAX": "9", "SLURM_ARRAY_TASK_COUNT": "3"},  # --array=1,4,9
        {"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_MIN": "0", "SLURM_ARRAY_TASK_COUNT": "4", "SLURM_ARRAY_TASK_STEP": "2"},
        {"SLURM_ARRAY_TASK_ID": "x", "SLURM_ARRAY_TASK_MIN": "0", "SLURM_ARRAY_TASK_COUNT": "4"},
        {"SLURM_ARRAY_TASK_ID": "2"},
    ],
)
def test_arrays_without_an_even_spacing_are_refused_in_one_line(env):
    with pytest.raises(UserError, match="--shard i/n") as caught:
        slurm_array_shard(env)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(("first", "last"), [(0, 7), (1, 8), (5, 12)])
def test_run_takes_its_slice_from_the_array_task_and_every_planned_trial_runs_in_exactly_one(monkeypatch, first, last):
    from adamole_bench.cli import _shard
    from adamole_bench.harness.run.sweep import plan
    from adamole_bench.harness.settings.load import load_config

    config = load_config(model="tiny-llama", methods=["lora", "mole"], tasks=["fruit_or_color"], seeds=list(range(10)))
    trials = plan(config)
    ran = []
    for env in _array(first, last):
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        ran += select_shard(trials, *_shard(None))  # what `run` without --shard does in this task
    assert len(ran) == len(trials) > 8 and set(ran) == set(trials)
    assert _shard("3/8") == (3, 8)  # an explicit --shard wins over the array
