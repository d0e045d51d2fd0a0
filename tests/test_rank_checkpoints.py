"""The step the ranks of a multi-process trial resume from: the newest one every rank holds and loads, found
by real collectives in a 2-process gloo group over what kills leave on disk (one rank a save ahead, a
damaged file, no common step); a stop signal on one rank reaches all of them."""

import json
import os
import subprocess
from pathlib import Path

import pytest

from adamole_bench.harness.settings.config import TrainConfig
from adamole_bench.harness.train.checkpoint import Checkpoint
from adamole_bench.harness.train.distributed import Context
from adamole_bench.harness.train.rank_checkpoints import RankCheckpoints, newest_common, trial_checkpoint
from adamole_bench.tests.fault_tools import torchrun

SCRIPT = Path(__file__).with_name("rank_checkpoints_run.py")


def test_the_newest_step_every_rank_holds_comes_first():
    assert newest_common([[10, 20, 30], [20, 10]]) == [20, 10]
    assert newest_common([[30], [20]]) == []
    assert newest_common([[], [10]]) == []
    assert newest_common([[10, 20]]) == [20, 10]


def test_one_file_per_trial_in_one_process_one_per_rank_and_world_size_in_several(tmp_path):
    config = TrainConfig(checkpoint_dir=str(tmp_path), checkpoint_every=10)
    single = trial_checkpoint("0123456789ab", 3, config, Context())
    assert isinstance(single, Checkpoint) and single.path == tmp_path / "0123456789ab-seed3.ckpt"  # as before: single-process files unchanged
    ranks = trial_checkpoint("0123456789ab", 3, config, Context(rank=1, world_size=2))
    assert isinstance(ranks, RankCheckpoints) and not ranks.announces
    assert ranks.file(20).path == tmp_path / "0123456789ab-seed3-rank1of2-step20.ckpt"
    other_world = RankCheckpoints(tmp_path, "0123456789ab", 3, 10, Context(rank=1, world_size=4))
    ranks.file(20).save({"step": 20, "steps": 40})
    assert ranks.held() == [20] and other_world.held() == []  # 4 ranks never read 2 ranks' files


@pytest.mark.integration  # two processes under torchrun
def test_ranks_resume_from_the_newest_step_all_hold_and_load_and_a_signal_on_one_reaches_all(tmp_path):
    folder = tmp_path / "checkpoints"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([*torchrun(2, (str(SCRIPT),)), str(folder)], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    seen = {rank: json.loads((tmp_path / f"seen-rank{rank}.json").read_text()) for rank in (0, 1)}
    for rank, found in seen.items():
        assert found["rank"] == rank
        assert found["after two saves"] == [20]
        assert found["one rank ahead"] == [20, rank]  # rank 0's step 30 is not rank 1's: both resume from 20, each its own state
        assert found["one file damaged"] == [10, rank]  # rank 1's step 20 does not load: both go back to 10
        assert found["for other steps"] is None
        assert found["no common step"] is None
        assert found["stop signal"] == 10 and found["no stop signal"] is None
        assert found["left"] == []  # removed, temp files of a killed save included
    said = done.stdout
    damaged = "rank1of2-step20.ckpt is damaged (truncated or overwritten): ignored, trying an older step every rank holds"
    assert said.count(damaged) == 2  # by rank 1, the rank that holds it, each time it is tried
    assert "no checkpoint step that every rank holds and loads (rank 0: 40; rank 1: none): training from step 0" in said
    assert said.count("no checkpoint step that every rank holds and loads") == 2  # rank 0 alone says it, once per time
