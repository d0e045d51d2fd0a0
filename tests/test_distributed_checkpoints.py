"""Step checkpoints of a trial trained by `torchrun --nproc_per_node 2` (gloo, real processes): a rank
SIGKILLed mid-training, SIGTERM to torchrun, and SLURM's SIGUSR1 reaching one rank alone each end in a
rerun of the same command that resumes from the newest step both ranks saved, and the finished trial's
metrics, loss curve and adapter bytes equal an uninterrupted torchrun run's (CPU, dropout on, gradient
accumulation 2)."""

import signal
from pathlib import Path

import psutil
import pytest

from adamole_bench.tests.fault_tools import cli_env, finish, run_cli, start, torchrun, trial_runs, wait_until
from adamole_bench.tests.test_checkpoint_faults import STEPS, SWEEP, _finished, _same_as

pytestmark = [pytest.mark.integration, pytest.mark.slow]  # each test: two torchrun sweeps of two processes (minutes on 2 cores)

EVERY = ["train.checkpoint_every=10"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("uninterrupted")
    done = run_cli([*SWEEP, "train.checkpoint_every=0"], cli_env(folder / "runs"), timeout=600, launcher=torchrun(2))  # no checkpoints
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    recorded = _finished(folder / "runs", folder)
    assert recorded["resumed_from"] == 0 and len(recorded["loss_curve"]) == STEPS and recorded["adapter"]
    return recorded


def _steps(runs: Path, rank: int) -> list[int]:
    """The steps rank `rank` of 2 holds a checkpoint file for."""
    return sorted(int(path.stem.rsplit("-step", 1)[1]) for path in (runs / "checkpoints").glob(f"*-rank{rank}of2-step*.ckpt"))


def _both_saved(runs: Path) -> list[int]:
    """The steps both ranks hold (a first checkpoint: training has begun on both)."""
    return sorted(set(_steps(runs, 0)) & set(_steps(runs, 1)))


def _rank(launcher: psutil.Process, rank: int) -> psutil.Process:
    """torchrun's worker process of that rank (its RANK variable)."""
    return wait_until(lambda: next((p for p in launcher.children() if p.environ().get("RANK") == str(rank)), None), what=f"rank {rank}")


def _saved(runs: Path, rank: int, step: int) -> dict:
    from adamole_bench.harness.train.checkpoint import Checkpoint

    (path,) = (runs / "checkpoints").glob(f"*-rank{rank}of2-step{step}.ckpt")
    saved = Checkpoint(path, path.name.split("-seed")[0], 10).load(STEPS)
    assert saved is not None, f"{path} did not load"
    return saved


def _rerun_resumes(runs: Path, tmp_path: Path, uninterrupted: dict, args: list[str]) -> dict:
    """Rerun the same command: it resumes (its printed line and the run's resumed_from_step) and equals the uninterrupted run."""
    rerun = run_cli(args, cli_env(runs), timeout=600, launcher=torchrun(2))
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    assert rerun.stdout.count("resuming from step") == 1, rerun.stdout[-3000:]  # rank 0 says it, once
    resumed = _finished(runs, tmp_path)
    assert 10 <= resumed["resumed_from"] < STEPS
    assert f"resuming from step {resumed['resumed_from']} of {STEPS}" in rerun.stdout
    _same_as(resumed, uninterrupted)
    return resumed


def test_a_rank_sigkilled_mid_training_resumes_on_the_rerun_from_the_newest_step_both_saved_bitwise(tmp_path, uninterrupted):
    runs = tmp_path / "runs"
    args = [*SWEEP, *EVERY]
    launcher = start(args, cli_env(runs), tmp_path / "killed.log", launcher=torchrun(2))
    _rank(psutil.Process(launcher.pid), 1)
    wait_until(lambda: _both_saved(runs), what="a first checkpoint of both ranks")
    _rank(psutil.Process(launcher.pid), 1).send_signal(signal.SIGKILL)  # torchrun then ends rank 0 and exits non-zero
    code, output = finish(launcher, tmp_path / "killed.log")
    assert code != 0, output[-3000:]
    common = _both_saved(runs)
    assert common and 10 <= common[-1] < STEPS

    resumed = _rerun_resumes(runs, tmp_path, uninterrupted, args)
    assert resumed["resumed_from"] == common[-1]  # the newest step both ranks held
    assert not list((runs / "checkpoints").iterdir())  # FINISHED: every rank's files are gone


@pytest.mark.parametrize(("signum", "to"), [(signal.SIGTERM, "torchrun"), (signal.SIGTERM, "every process"), (signal.SIGUSR1, "rank 1")])
def test_a_stop_signal_saves_every_rank_at_one_step_and_the_rerun_resumes_bitwise(tmp_path, uninterrupted, signum, to):
    """SIGTERM to torchrun (it forwards it to each rank); to torchrun and every rank at once, as SLURM signals
    every process of a job step (so each rank gets it twice); or SIGUSR1 to rank 1 alone (as a Ray gang member
    may get it): every rank finishes the step, saves it and stops; the trial is FAILED as terminated."""
    runs = tmp_path / "runs"
    name = signal.Signals(signum).name
    keep = signum == signal.SIGUSR1
    args = [*SWEEP, *EVERY, f"train.keep_checkpoints={str(keep).lower()}"]
    launcher = start(args, cli_env(runs), tmp_path / "stopped.log", launcher=torchrun(2))
    parent = psutil.Process(launcher.pid)
    ranks = [_rank(parent, 0), _rank(parent, 1)]
    targets = {"torchrun": [parent], "every process": [parent, *ranks], "rank 1": ranks[1:]}[to]
    wait_until(lambda: _both_saved(runs), what="a first checkpoint of both ranks (training has begun)")
    for target in targets:
        target.send_signal(signum)
    code, output = finish(launcher, tmp_path / "stopped.log", timeout=120)
    assert code != 0, output[-3000:]
    if to != "rank 1":  # (rank 1 alone: torchrun may end rank 0 once rank 1 exits, before rank 0 prints)
        assert f"terminated ({name})" in output, output[-3000:]  # rank 0's line: it stopped on the signal, not on a lost peer
    newest = [_steps(runs, rank)[-1] for rank in (0, 1)]
    assert newest[0] == newest[1] and 10 < newest[0] < STEPS, newest  # both ranks stopped after the same step
    saved = [_saved(runs, rank, newest[0]) for rank in (0, 1)]
    assert [s["reason"] for s in saved] == [f"on {name}"] * 2
    assert saved[0]["params"].keys() == saved[1]["params"].keys()
    assert all((saved[0]["params"][k] == saved[1]["params"][k]).all() for k in saved[0]["params"])  # DDP: equal weights on both ranks
    (attempt,) = trial_runs(f"sqlite:///{runs / 'mlflow.db'}")
    assert attempt.info.status == "FAILED" and attempt.data.tags["failure"] == "terminated"

    resumed = _rerun_resumes(runs, tmp_path, uninterrupted, args)
    assert resumed["resumed_from"] == newest[0]
    if keep:
        assert _steps(runs, 0) == _steps(runs, 1) == [STEPS]  # kept when asked: the last step's, older ones dropped
    else:
        assert not list((runs / "checkpoints").iterdir())
