"""A transient tracking-server error never kills a sweep: a real `mlflow server` stopped mid-trial and
started again on the same port and database; the sweep retries its store calls and finishes. Errors
that are not transient are never retried."""

import subprocess
import sys
import time
from pathlib import Path

import pytest

from adamole_bench.harness.store.liveness import stop_tree
from adamole_bench.harness.store.retry import RetryingClient, transient
from adamole_bench.harness.train.checkpoint import Checkpoint
from adamole_bench.tests.fault_tools import TINY, cli_env, finish, free_port, start, trial_runs, wait_for_http, wait_until

STEPS = 60
OUTAGE_SECONDS = 10  # after training ended: the trial's losses, tags and metrics wait for the server


def _checkpointed_step(runs: Path) -> int:
    """The step of the trial's checkpoint (0: none yet), read as the next attempt would read it."""
    found = list((runs / "checkpoints").glob("*.ckpt"))
    saved = Checkpoint(found[0], found[0].name.split("-seed")[0], 20).load() if found else None
    return saved["step"] if saved else 0


def _server(root: Path, port: int) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
           "--artifacts-destination", str(root / "artifacts"), "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]  # fmt: skip
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    wait_for_http(f"http://127.0.0.1:{port}/health")
    return server


@pytest.mark.integration  # two server starts and a sweep
def test_a_sweep_outlives_its_tracking_server_restarting_mid_trial(tmp_path):
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    server = _server(tmp_path, port)
    # MLflow's own HTTP retries off (they would cover the outage by themselves): only ours are tested.
    env = cli_env(tmp_path / "runs", MLFLOW_TRACKING_URI=uri, MLFLOW_HTTP_REQUEST_MAX_RETRIES="0", ADAMOLE_BENCH_STORE_RETRY_SECONDS="120")
    args = ["run", *TINY, "--methods", "lora", "reference=false", "--max-steps", str(STEPS), "train.checkpoint_every=20"]
    sweep = start(args, env, tmp_path / "sweep.log")
    try:
        wait_until(lambda: _checkpointed_step(tmp_path / "runs"), what="training to begin")  # no store calls while it trains
        stop_tree(server.pid, grace_seconds=10)
        # The last step's checkpoint: training is over and the trial records its losses, with no server.
        wait_until(lambda: _checkpointed_step(tmp_path / "runs") == STEPS, what="the end of training")
        time.sleep(OUTAGE_SECONDS)
        server = _server(tmp_path, port)
        code, output = finish(sweep, tmp_path / "sweep.log")
        statuses = [r.info.status for r in trial_runs(uri)]
    finally:
        sweep.kill()
        stop_tree(server.pid, grace_seconds=10)
    assert code == 0, output[-3000:]
    assert "MLflow store call log_batch failed" in output and "retrying for up to 120 s" in output and "Traceback" not in output
    assert statuses == ["FINISHED"]


class _Flaky:
    """A stand-in store whose call fails with `error` the first `failures` times."""

    def __init__(self, error: Exception, failures: int):
        self.error, self.failures, self.calls = error, failures, 0

    def set_tag(self, *args):
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        return "ok"


def test_only_transient_errors_are_retried_and_only_within_the_budget():
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE, TEMPORARILY_UNAVAILABLE

    refused = MlflowException("API request to http://127.0.0.1:1/api failed with exception Max retries exceeded (Connection refused)")
    flaky = _Flaky(refused, 2)
    assert RetryingClient(flaky, seconds=30).set_tag("run", "k", "v") == "ok" and flaky.calls == 3
    bad = _Flaky(MlflowException("Invalid value for tag", error_code=INVALID_PARAMETER_VALUE), 1)
    with pytest.raises(MlflowException, match="Invalid value"):
        RetryingClient(bad, seconds=30).set_tag("run", "k", "v")
    assert bad.calls == 1
    down = _Flaky(refused, 100)
    with pytest.raises(MlflowException, match="Connection refused"):
        RetryingClient(down, seconds=1).set_tag("run", "k", "v")
    assert 1 < down.calls < 5  # 0.5 s then 1 s apart: the budget of 1 s ends it
    assert not transient(OSError(28, "No space left on device"), "set_tag")  # a full disk is no passing outage
    unavailable = MlflowException("API request failed with error code 503", error_code=TEMPORARILY_UNAVAILABLE)
    assert transient(unavailable, "set_tag") and not transient(unavailable, "create_experiment")  # the claim: maybe carried out
    assert transient(refused, "create_experiment")  # never reached the server
