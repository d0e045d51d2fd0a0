"""Step checkpoints across real processes: a sweep SIGKILLed, SIGTERMed or sent SLURM's SIGUSR1 mid-training
resumes on the rerun from its last checkpoint, and the finished trial's metrics, loss curve and adapter
bytes equal an uninterrupted run's (CPU, dropout on, gradient accumulation 2)."""

import json
import signal
from pathlib import Path

import pytest

from adamole_bench.harness.train.checkpoint import Checkpoint
from adamole_bench.tests.fault_tools import TINY, cli_env, finish, run_cli, start, trial_runs, wait_until

pytestmark = pytest.mark.integration  # real processes killed mid-training, each trial trained twice

STEPS = 120
SWEEP = [
    "run",
    *TINY,
    "--methods",
    "lora",
    "reference=false",
    "--max-steps",
    str(STEPS),
    "train.grad_accum=2",
    "lora.dropout=0.1",
    "save_adapters=true",
]
KEYS = ("eval/acc", "train/final_loss", "train/mean_loss", "train/steps", "eval/docs")


def _finished(runs: Path, tmp_path: Path) -> dict:
    """What the one FINISHED lora trial recorded: its metrics, loss curve, adapter files' bytes and tags."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{runs / 'mlflow.db'}"
    (run,) = [r for r in trial_runs(uri) if r.info.status == "FINISHED"]
    client = MlflowClient(uri)
    folder = Path(client.download_artifacts(run.info.run_id, "adapter", str(tmp_path / run.info.run_id)))
    return {
        "metrics": {key: run.data.metrics[key] for key in KEYS},
        "loss_curve": [m.value for m in sorted(client.get_metric_history(run.info.run_id, "train/loss"), key=lambda m: m.step)],
        "adapter": {str(path.relative_to(folder)): _comparable(path) for path in sorted(folder.rglob("*")) if path.is_file()},
        "resumed_from": int(run.data.tags["resumed_from_step"]),
    }


def _comparable(path: Path) -> bytes | dict:
    """A file's bytes; PEFT's adapter_config.json parsed, its target_modules sorted: PEFT writes that set in
    the process's string-hash order (PYTHONHASHSEED), which differs between any two processes."""
    if path.name != "adapter_config.json":
        return path.read_bytes()
    config = json.loads(path.read_text())
    return {**config, "target_modules": sorted(config["target_modules"])}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("uninterrupted")
    done = run_cli([*SWEEP, "train.checkpoint_every=0"], cli_env(folder / "runs"))  # no checkpoints at all
    assert done.returncode == 0, done.stdout[-3000:]
    recorded = _finished(folder / "runs", folder)
    assert recorded["resumed_from"] == 0 and len(recorded["loss_curve"]) == STEPS and recorded["adapter"]
    return recorded


def _checkpoint(runs: Path) -> Checkpoint | None:
    found = sorted((runs / "checkpoints").glob("*.ckpt"))
    return Checkpoint(found[0], found[0].name.split("-seed")[0], 10) if found else None


def _same_as(resumed: dict, uninterrupted: dict) -> None:
    assert resumed["metrics"] == uninterrupted["metrics"]
    assert resumed["loss_curve"] == uninterrupted["loss_curve"]
    assert resumed["adapter"] == uninterrupted["adapter"]  # the weights bitwise, file by file


def test_sigkill_mid_training_resumes_from_the_last_periodic_checkpoint_bitwise(tmp_path, uninterrupted):
    runs = tmp_path / "runs"
    env = cli_env(runs)
    killed = start([*SWEEP, "train.checkpoint_every=10"], env, tmp_path / "killed.log")
    wait_until(lambda: _checkpoint(runs), what="a first checkpoint")
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    saved = _checkpoint(runs).load()
    assert saved is not None and 10 <= saved["step"] < STEPS and saved["step"] % 10 == 0

    rerun = run_cli([*SWEEP, "train.checkpoint_every=10"], env)
    assert rerun.returncode == 0, rerun.stdout[-3000:]
    assert "(left RUNNING: its process died" in rerun.stdout and "resuming from step" in rerun.stdout
    resumed = _finished(runs, tmp_path)
    assert 10 <= resumed["resumed_from"] < STEPS
    _same_as(resumed, uninterrupted)
    assert not list((runs / "checkpoints").iterdir())  # FINISHED: the checkpoint is gone


@pytest.mark.parametrize(("signum", "keep"), [(signal.SIGTERM, False), (signal.SIGUSR1, True)])
def test_a_stop_signal_saves_at_the_step_end_exits_non_zero_and_the_rerun_resumes_bitwise(tmp_path, uninterrupted, signum, keep):
    runs = tmp_path / "runs"
    env = cli_env(runs)
    name = signal.Signals(signum).name
    args = [*SWEEP, "train.checkpoint_every=10", f"train.keep_checkpoints={str(keep).lower()}"]
    stopped = start(args, env, tmp_path / "stopped.log")
    wait_until(lambda: _checkpoint(runs), what="a first checkpoint (training has begun)")
    stopped.send_signal(signum)
    code, output = finish(stopped, tmp_path / "stopped.log", timeout=60)
    assert code == 128 + signum, output
    assert f"terminated ({name})" in output and "Traceback" not in output
    saved = _checkpoint(runs).load()
    assert saved["reason"] == f"on {name}" and 10 < saved["step"] < STEPS  # the step it was in, finished and saved
    (attempt,) = trial_runs(f"sqlite:///{runs / 'mlflow.db'}")
    assert attempt.info.status == "FAILED" and attempt.data.tags["failure"] == "terminated"  # never counted as done

    rerun = run_cli(args, env)
    assert rerun.returncode == 0, rerun.stdout[-3000:]
    assert f"resuming from step {saved['step']} of {STEPS} (checkpoint saved on {name})" in rerun.stdout
    resumed = _finished(runs, tmp_path)
    assert resumed["resumed_from"] == saved["step"]
    _same_as(resumed, uninterrupted)
    left = _checkpoint(runs)
    assert (left is not None and left.load()["step"] == STEPS) if keep else left is None  # kept only when asked
