"""Concurrency for real: processes racing to claim the same trials on one sqlite store and on a real
`mlflow server`, and two identical sweeps started at once on a fresh store. No trial runs twice, nothing crashes."""

import json
import os
import subprocess
import sys
from collections import Counter

import pytest

from adamole_bench.harness.store.liveness import stop_tree
from adamole_bench.harness.store.tracking import Tracker
from adamole_bench.tests.fault_tools import TINY, cli_env, finish, free_port, start, store_runs, trial_runs, wait_for_http

pytestmark = pytest.mark.integration  # racing processes and a real mlflow server

RACERS, TRIALS = 4, 12

# Each racer opens the store, then for every trial waits at a file barrier until all racers are ready,
# so all of them try to claim that trial at the same moment; the winner finishes its run at once.
RACER = """
import json, os, sys, time
from pathlib import Path
from adamole_bench.harness.store.tracking import Tracker

uri, barrier, racers, trials = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
tracker = Tracker("race", uri=uri)
won = []
for trial in range(trials):
    (barrier / f"{trial}.{os.getpid()}").touch()
    while len(list(barrier.glob(f"{trial}.*"))) < racers:
        time.sleep(0.001)
    run_id = tracker.claim_trial(f"hash{trial:04d}", 0, f"trial {trial}", {"kind": "trial"})
    if run_id:
        won.append(trial)
        with tracker.running(run_id):
            pass
print(json.dumps(won))
"""


def _race(uri: str, tmp_path) -> list[list[int]]:
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    Tracker("race", uri=uri)  # an existing store (the fresh-store race is the sweep test below)
    racers = [subprocess.Popen([sys.executable, "-c", RACER, uri, str(barrier), str(RACERS), str(TRIALS)], stdout=subprocess.PIPE, text=True)
              for _ in range(RACERS)]  # fmt: skip
    outputs = [racer.communicate(timeout=300)[0] for racer in racers]
    assert all(racer.returncode == 0 for racer in racers), outputs
    return [json.loads(out.strip().splitlines()[-1]) for out in outputs]


def _assert_each_trial_claimed_once(uri: str, wins: list[list[int]]) -> None:
    assert Counter(t for won in wins for t in won) == Counter(range(TRIALS))  # one winner per trial
    runs = [r for r in store_runs(uri, "race") if r.data.tags.get("kind") == "trial"]
    assert sorted(r.data.tags["identity"] for r in runs) == [f"hash{t:04d}" for t in range(TRIALS)]
    assert {r.info.status for r in runs} == {"FINISHED"}


def test_racing_claims_on_sqlite_never_double_claim(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    _assert_each_trial_claimed_once(uri, _race(uri, tmp_path))


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """A real local `mlflow server` (2 workers, so requests really run in parallel), stopped with all its children."""
    root = tmp_path_factory.mktemp("server")
    port = free_port()
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
           "--artifacts-destination", str(root / "artifacts"), "--host", "127.0.0.1", "--port", str(port), "--workers", "2"]  # fmt: skip
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for_http(f"http://127.0.0.1:{port}/health")
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_tree(server.pid, grace_seconds=20)


@pytest.mark.slow
def test_racing_claims_on_a_real_mlflow_server_never_double_claim(mlflow_server, tmp_path):
    _assert_each_trial_claimed_once(mlflow_server, _race(mlflow_server, tmp_path))


def test_a_stale_claim_without_a_run_is_taken_over(tmp_path):
    """A process that died between claiming and creating its run must not block the trial forever."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker("adamole-bench", uri=uri)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout.strip()
    from adamole_bench.harness.store.claims import claim_name
    from adamole_bench.harness.store.liveness import machine_id

    claim = tracker.client.create_experiment(claim_name(tracker.experiment_id, "abc123", 0, 0),
                                             tags={"process": f"{machine_id()}|{dead}|1", "pid": dead, "host": "here"})  # fmt: skip
    tracker.client.delete_experiment(claim)
    run_id = tracker.claim_trial("abc123", 0, "t", {})
    assert run_id is not None
    assert tracker.client.get_run(run_id).data.tags["claim_attempt"] == "1"


def _sweep_race(tmp_path, uri_env: dict[str, str]) -> None:
    args = ["run", *TINY, "--methods", "base,lora", "--seeds", "0,1", "--max-steps", "5"]
    env = cli_env(tmp_path / "runs", **uri_env)
    sweeps = [start(args, env, tmp_path / f"sweep{i}.log") for i in range(2)]
    results = [finish(sweep, tmp_path / f"sweep{i}.log") for i, sweep in enumerate(sweeps)]
    for code, output in results:
        assert code == 0 and "Traceback" not in output, output
        assert "| base (zero-shot) |" in output and "| lora |" in output  # each prints the whole table, waiting for the other's trials
    uri = uri_env.get("MLFLOW_TRACKING_URI") or f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}"
    names = [r.data.tags["mlflow.runName"] for r in trial_runs(uri)]
    assert sorted(names) == sorted(set(names)) and len(names) == 4, names  # every trial ran exactly once
    assert {r.info.status for r in trial_runs(uri)} == {"FINISHED"}


def test_two_identical_sweeps_at_once_on_a_fresh_store(tmp_path):
    _sweep_race(tmp_path, {})


@pytest.mark.slow
def test_two_identical_sweeps_at_once_on_a_real_mlflow_server(mlflow_server, tmp_path):
    _sweep_race(tmp_path, {"MLFLOW_TRACKING_URI": mlflow_server})


CI_MARKERS = (
    "PYTEST_CURRENT_TEST",
    "GITHUB_ACTIONS",
    "CI",
    "CIRCLECI",
    "GITLAB_CI",
    "JENKINS_URL",
    "TRAVIS",
    "TF_BUILD",
    "BUILDKITE",
    "DO_NOT_TRACK",
)


@pytest.mark.parametrize(("setting", "disabled"), [(None, True), ("false", False), ("true", True)])
def test_mlflow_telemetry_is_off_unless_the_user_turns_it_on(setting, disabled):
    """Outside CI (MLflow turns telemetry off there by itself) the CLI's defaults turn it off; a user's choice stands."""
    env = {k: v for k, v in os.environ.items() if k not in CI_MARKERS and k != "MLFLOW_DISABLE_TELEMETRY"}
    if setting is not None:
        env["MLFLOW_DISABLE_TELEMETRY"] = setting
    probe = "from adamole_bench.base.paths import offline_defaults; offline_defaults(); from mlflow.telemetry.utils import is_telemetry_disabled; print(is_telemetry_disabled())"
    done = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.strip().splitlines()[-1] == str(disabled)
