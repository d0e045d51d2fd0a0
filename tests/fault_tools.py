"""Helpers of the fault-injection tests: real `adamole-bench` subprocesses, a store to inspect, a poll loop."""

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

# One trial that trains long enough to be killed mid-way, after a base trial that finishes at once.
TINY = ["--model", "tiny-llama", "--tasks", "fruit_or_color", "--limit", "8", "save_adapters=false", "train.warmup_steps=0"]


def cli_env(runs: Path, **extra: str) -> dict[str, str]:
    """A private store, one thread (2 shared cores), a fast heartbeat so liveness is observable in seconds."""
    env = {**os.environ, "ADAMOLE_BENCH_RUNS": str(runs), "OMP_NUM_THREADS": "1", "ADAMOLE_BENCH_HEARTBEAT_SECONDS": "0.5", **extra}
    if "MLFLOW_TRACKING_URI" not in extra:
        env.pop("MLFLOW_TRACKING_URI", None)
    return env


CLI = [sys.executable, "-m", "adamole_bench.cli"]


def torchrun(processes: int = 2, program: tuple[str, ...] = ("-m", "adamole_bench.cli")) -> list[str]:
    """`torchrun --nproc_per_node N -m adamole_bench.cli` (or another program) on a free port: a launcher for `start` and `run_cli`."""
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes), "--master_port", str(free_port()), *program]


def start(args: list[str], env: dict[str, str], log: Path, launcher: list[str] = CLI) -> subprocess.Popen:
    """`adamole-bench ARGS` (or `launcher ARGS`) in the background, stdout and stderr to `log`."""
    handle = open(log, "w")  # noqa: SIM115 - the child writes to it for its whole life
    return subprocess.Popen([*launcher, *args], env=env, stdout=handle, stderr=subprocess.STDOUT)


def finish(process: subprocess.Popen, log: Path, timeout: float = 300) -> tuple[int, str]:
    code = process.wait(timeout=timeout)
    return code, log.read_text()


def wait_until(condition, timeout: float = 180, what: str = "condition"):
    deadline = time.time() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.time() < deadline, f"timed out after {timeout:.0f} s waiting for {what}"
        time.sleep(0.3)


def store_runs(uri: str, experiment: str = "adamole-bench") -> list:
    """Every run of the experiment, oldest first, read with a plain MLflow client (no harness code)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return []
    return client.search_runs([found.experiment_id], order_by=["attributes.start_time ASC"], max_results=1000)


def trial_runs(uri: str, name: str | None = None) -> list:
    runs = [r for r in store_runs(uri) if r.data.tags.get("kind") == "trial"]
    return [r for r in runs if name is None or r.data.tags["mlflow.runName"] == name]


def retried_once_after_a_dead_worker(driver: subprocess.Popen, log: Path, uri: str, name: str) -> list:
    """The driver ends well after one Ray worker died mid-trial: the trial's first attempt is FAILED
    as stale, a retry claims attempt 1 and finishes. Returns the two attempts' runs."""
    code, output = finish(driver, log, timeout=600)
    assert code == 0, output
    assert "Ray worker died (ActorDiedError)" in output and "retry 1 of resources.max_retries=2" in output
    attempts = trial_runs(uri, name)
    assert [r.info.status for r in attempts] == ["FAILED", "FINISHED"]
    assert [r.data.tags["claim_attempt"] for r in attempts] == ["0", "1"]
    assert attempts[0].data.tags["failure"] == "stale", attempts[0].data.tags
    return attempts


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_http(url: str, timeout: float = 180) -> None:
    def up():
        try:
            return urllib.request.urlopen(url, timeout=5).status == 200
        except OSError:
            return False

    wait_until(up, timeout, f"{url} to answer")


def run_cli(
    args: list[str], env: dict[str, str], timeout: float = 300, cwd: Path | None = None, launcher: list[str] = CLI
) -> subprocess.CompletedProcess:
    """`adamole-bench ARGS` (or `launcher ARGS`) to completion (in `cwd`), output captured."""
    return subprocess.run([*launcher, *args], env=env, capture_output=True, text=True, timeout=timeout, cwd=cwd)
