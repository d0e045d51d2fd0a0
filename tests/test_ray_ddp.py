"""One trial on several Ray workers (`resources.workers_per_trial=2`, a real local cluster of 2 CPUs): the
workers form a gloo process group and train each trial exactly as `torchrun --nproc_per_node 2` does, so
both stores hold the same trials (same hashes), losses, metrics and adapter bytes; a SIGKILLed rank 1
costs one retry on a new pair of workers and the trial is recorded once; with step checkpoints the retry
resumes from the newest step both ranks saved and ends bitwise where an uninterrupted torchrun run ends."""

import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import psutil
import pytest

from adamole_bench.tests.fault_tools import free_port, retried_once_after_a_dead_worker, run_cli, start, store_runs, trial_runs, wait_until
from adamole_bench.tests.test_checkpoint_faults import SWEEP as CHECKPOINTED
from adamole_bench.tests.test_checkpoint_faults import _comparable, _finished, _same_as
from adamole_bench.tests.test_distributed_checkpoints import _both_saved, uninterrupted  # noqa: F401 - uninterrupted: a fixture (torchrun)
from adamole_bench.tests.test_ray_executor import (  # noqa: F401 - ray_head, ray_cluster: fixtures, this module's own cluster
    MEASURED,
    TINY,
    _env,
    _running_in_worker,
    _worker,
    ray_cluster,
    ray_head,
)

pytestmark = pytest.mark.integration  # a private Ray cluster, torchrun and real sweeps

SWEEP = ["run", "--model", "tiny-llama", "--tasks", "fruit_or_color", "--limit", "8", "--methods", "lora,adamole", "--max-steps", "4",
         "train.batch_size=4", "train.warmup_steps=0", "train.lr=3e-3"]  # fmt: skip


def _adapter(client, run) -> dict:
    folder = Path(client.download_artifacts(run.info.run_id, "adapter", tempfile.mkdtemp()))
    return {str(path.relative_to(folder)): _comparable(path) for path in sorted(folder.rglob("*")) if path.is_file()}


def _pids(run) -> list[int]:
    """The pids of a trial's workers, rank 0 first (its `ray_workers` tag: 'pid 812 on node-2, pid 813 on node-2')."""
    return [int(part.split()[1]) for part in run.data.tags["ray_workers"].split(", ")]


@pytest.fixture(scope="module")
def both(ray_cluster, tmp_path_factory):  # noqa: F811 - the imported fixture
    root = tmp_path_factory.mktemp("ddp")
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()), "-m", "adamole_bench.cli"]
    done = {}
    for name, command in (
        ("torchrun", [*torchrun, *SWEEP]),
        (
            "ray",
            [sys.executable, "-m", "adamole_bench.cli", *SWEEP, "resources.workers_per_trial=2", "--executor", "ray", "--ray-address", ray_cluster],
        ),
    ):
        result = subprocess.run(command, env=_env(root / name), capture_output=True, text=True, timeout=900)
        assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
        done[name] = {"uri": f"sqlite:///{root / name / 'mlflow.db'}", "output": result.stdout}
    return done


def test_two_ray_workers_train_a_trial_exactly_as_torchrun_does(both):
    from mlflow.tracking import MlflowClient

    runs = {name: {(r.data.tags["config_hash"], r.data.tags["seed"]): r for r in trial_runs(d["uri"])} for name, d in both.items()}
    assert runs["ray"].keys() == runs["torchrun"].keys() and len(runs["ray"]) == 3  # base, lora, adamole: the same hashes
    assert "3 Ray tasks on 1 warm gang(s) of 2 workers (1 CPU, 0 GPU each), 1 node(s)" in both["ray"]["output"]
    clients = {name: MlflowClient(d["uri"]) for name, d in both.items()}
    for key, ray_run in runs["ray"].items():
        torchrun_run = runs["torchrun"][key]
        assert ray_run.info.status == torchrun_run.info.status == "FINISHED"
        assert ray_run.data.params == torchrun_run.data.params
        results = [{k: repr(v) for k, v in run.data.metrics.items() if k not in MEASURED} for run in (ray_run, torchrun_run)]
        assert results[0] == results[1], key  # exact: the same slices of the same global batches, the same all-reduce
        if ray_run.data.tags["method"] == "base":
            continue
        assert ray_run.data.params["train.world_size"] == "2"
        losses = [[m.value for m in clients[name].get_metric_history(run.info.run_id, "train/loss")] for name, run in (("ray", ray_run), ("torchrun", torchrun_run))]  # fmt: skip
        assert losses[0] == losses[1] and len(losses[0]) == 4
        pids = _pids(ray_run)
        assert len(set(pids)) == 2 and pids[0] == int(ray_run.data.tags["pid"])  # rank 0 recorded it
        adapters = [_adapter(clients[name], run) for name, run in (("ray", ray_run), ("torchrun", torchrun_run))]
        assert adapters[0] == adapters[1] and any(f.endswith(".safetensors") for f in adapters[0])  # the weights bitwise
    assert both["ray"]["output"].count("adamole/fruit_or_color/seed0") == 1  # the driver prints each trial once


@pytest.mark.slow
def test_a_killed_rank_costs_one_retry_on_a_new_gang_and_the_trial_is_recorded_once(ray_cluster, tmp_path):  # noqa: F811
    runs = tmp_path / "runs"
    uri, env = f"sqlite:///{runs / 'mlflow.db'}", _env(runs)
    args = ["run", *TINY, "--methods", "lora", "--max-steps", "400", "reference=false", "resources.workers_per_trial=2",
            "--executor", "ray", "--ray-address", ray_cluster]  # fmt: skip
    driver = start(args, env, tmp_path / "driver.log")
    name = "lora/fruit_or_color/seed0"
    victim = wait_until(lambda: _running_in_worker(uri, name), what="the trial to run on its two Ray workers")
    first = _pids(victim)
    _worker(first[1]).send_signal(signal.SIGKILL)  # rank 1, mid-training: rank 0 is left waiting in an all-reduce
    attempts = retried_once_after_a_dead_worker(driver, tmp_path / "driver.log", uri, name)
    assert attempts[0].data.tags["error"].startswith(f"stale: rank 1 of its 2 Ray workers died (pid {first[0]} on "), attempts[0].data.tags["error"]
    assert not set(_pids(attempts[1])) & set(first)  # a new pair of workers
    assert not psutil.pid_exists(first[0]) or psutil.Process(first[0]).status() == psutil.STATUS_ZOMBIE  # its rank 0 was killed with it
    assert not [r for r in store_runs(uri) if r.info.status == "RUNNING"]


@pytest.mark.slow
def test_a_killed_rank_s_retry_resumes_from_the_gangs_checkpoints_and_equals_torchrun_bitwise(ray_cluster, tmp_path, uninterrupted):  # noqa: F811
    runs = tmp_path / "runs"
    uri, env = f"sqlite:///{runs / 'mlflow.db'}", _env(runs)
    args = [*CHECKPOINTED, "train.checkpoint_every=10", "resources.workers_per_trial=2", "--executor", "ray", "--ray-address", ray_cluster]
    driver = start(args, env, tmp_path / "driver.log")
    name = "lora/fruit_or_color/seed0"
    victim = wait_until(lambda: _running_in_worker(uri, name), what="the trial to run on its two Ray workers")
    wait_until(lambda: _both_saved(runs), what="a first checkpoint of both ranks")
    _worker(_pids(victim)[1]).send_signal(signal.SIGKILL)  # rank 1, after a checkpoint both ranks hold
    attempts = retried_once_after_a_dead_worker(driver, tmp_path / "driver.log", uri, name)
    assert 10 <= int(attempts[1].data.tags["resumed_from_step"]) < 120  # the retry on the new gang resumed
    assert attempts[1].data.params["train.world_size"] == "2"
    resumed = _finished(runs, tmp_path)
    _same_as(resumed, uninterrupted)  # what `torchrun --nproc_per_node 2` gives without any interruption
    assert not list((runs / "checkpoints").iterdir())  # FINISHED: every rank's files are gone


def test_more_workers_per_trial_than_the_cluster_has_is_one_line_before_any_run(ray_cluster, tmp_path):  # noqa: F811
    runs = tmp_path / "runs"
    result = run_cli(
        ["run", *TINY, "--methods", "lora", "resources.workers_per_trial=3", "--executor", "ray", "--ray-address", ray_cluster], _env(runs)
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert (
        "the Ray cluster has room for 2 worker(s) of resources.cpus_per_trial=1 CPU and resources.gpus_per_trial=0 GPU at once, "
        "but resources.workers_per_trial=3 asks for 3 per trial; lower it or add nodes" in result.stderr
    ), result.stderr
    assert store_runs(f"sqlite:///{runs / 'mlflow.db'}") == []
