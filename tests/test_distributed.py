"""`run` under torchrun with 2 CPU processes (gloo) matches the single-process run with the same global batch."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from adamole_bench.harness.store.tracking import Tracker

pytestmark = pytest.mark.integration  # two processes under torchrun

SCRIPT = Path(__file__).with_name("ddp_run.py")
COMMON = ["run", "--model", "tiny-llama", "--methods", "toy-moe", "--tasks", "fruit_or_color", "--max-steps", "4", "--limit", "24",
          "toy-moe.dropout=0", "train.lr=1e-2", "train.warmup_steps=0", "save_adapters=false"]  # fmt: skip


def _run(tmp_path: Path, name: str, launcher: list[str], batch_size: int) -> dict:
    uri = f"sqlite:///{tmp_path / name / 'mlflow.db'}"
    (tmp_path / name).mkdir()
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([*launcher, str(SCRIPT), *COMMON, f"train.batch_size={batch_size}"], env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    tracker = Tracker("adamole-bench", uri=uri)
    trials = tracker.client.search_runs([tracker.experiment_id], "tags.kind = 'trial'")
    sweeps = tracker.client.search_runs([tracker.experiment_id], "tags.kind = 'sweep'")
    # toy-moe and the zero-shot base reference, once each: only rank 0 may create runs
    assert sorted(t.data.tags["method"] for t in trials) == ["base", "toy-moe"] and len(sweeps) == 1
    trials = [t for t in trials if t.data.tags["method"] == "toy-moe"]
    history = [m.value for m in sorted(tracker.client.get_metric_history(trials[0].info.run_id, "train/loss"), key=lambda m: m.step)]
    return {"metrics": trials[0].data.metrics, "losses": history, "output": done.stdout}


@pytest.mark.filterwarnings("ignore")
def test_two_process_ddp_matches_single_process_with_the_same_global_batch(tmp_path):
    single = _run(tmp_path, "single", [sys.executable], batch_size=8)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517"]
    ddp = _run(tmp_path, "ddp", torchrun, batch_size=4)

    assert len(ddp["losses"]) == len(single["losses"]) == 4
    # Same examples and token-weighted loss: equal up to float order and the per-slice aux loss.
    assert ddp["losses"] == pytest.approx(single["losses"], rel=2e-3)
    assert ddp["losses"][0] == pytest.approx(single["losses"][0], rel=1e-5)  # before any update: exact
    for key in ("eval/acc", "eval/docs", "train/steps"):
        assert ddp["metrics"][key] == pytest.approx(single["metrics"][key]), key
    assert ddp["output"].count("toy-moe/fruit_or_color/seed0") == 1  # rank 0 prints, rank 1 is quiet
