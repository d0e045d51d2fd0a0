"""`--executor ray` on a real local Ray cluster (`ray start --head`, 2 CPUs, one per module), driven by
the CLI as a user would: a 2×2 grid gives the same MLflow records as the local executor on two warm
workers, `report --sensitivity` reads it back, a SIGKILLed worker costs one retry, Ctrl-C cancels and
marks FAILED, and a driver killed with its own local instance leaves no Ray process behind.
The cluster's processes are all gone when the module ends."""

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import psutil
import pytest

from adamole_bench.harness.store.liveness import stop_tree
from adamole_bench.tests.fault_tools import (
    cli_env,
    finish,
    free_port,
    retried_once_after_a_dead_worker,
    run_cli,
    start,
    store_runs,
    trial_runs,
    wait_for_http,
    wait_until,
)
from adamole_bench.tests.test_checkpoint_faults import STEPS, _checkpoint, _finished, _same_as, uninterrupted  # noqa: F401 - uninterrupted: a fixture
from adamole_bench.tests.test_checkpoint_faults import SWEEP as CHECKPOINTED

pytestmark = pytest.mark.integration  # a private Ray cluster and real sweeps through it

ray = pytest.importorskip("ray", reason="the ray extra (make setup installs it)")

TINY = ["--model", "tiny-llama", "--tasks", "fruit_or_color", "--limit", "8", "save_adapters=false", "train.warmup_steps=0", "train.lr=3e-3"]
GRID = ["run", *TINY, "--methods", "adamole", "--seeds", "0,1", "--max-steps", "6", "adamole.max_threshold=0.0625,0.25", "adamole.num_experts=2,4"]
PER_PROCESS = {"host", "pid", "process", "heartbeat", "executor", "ray_task", "mlflow.parentRunId", "mlflow.runName"}  # tags that name who ran it
MEASURED = (
    "train/seconds",
    "train/tokens_per_second",
    "eval/seconds",
    "memory/peak_mb",
    "memory/peak_delta_mb",
)  # wall-clock and memory, not results


# Ray's token auth with a private token for head, drivers and workers: never the user's ~/.ray/auth_token,
# and no token file needed on a fresh machine (`ray start` with RAY_AUTH_MODE=token refuses to run without one).
AUTH = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}


def _env(runs: Path) -> dict[str, str]:
    return cli_env(runs, **AUTH)


def _cluster_processes(marker: str) -> set[psutil.Process]:
    """The processes of our cluster: those with its private temp dir in their command line (GCS, raylet,
    monitors) and their descendants (workers rename themselves `ray::IDLE`)."""
    found = set()
    for process in psutil.process_iter(["cmdline"]):
        try:
            if any(marker in part for part in process.info["cmdline"] or []):
                found |= {process, *process.children(recursive=True)}
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


@pytest.fixture(scope="module")
def ray_head():
    """`ray start --head --block` with 2 CPUs, one custom `ab_slot` and Ray Client's server in a private temp dir; its GCS address,
    its ray:// address and the temp dir. Teardown stops it and checks that none of its processes (GCS, raylet, workers) is left."""
    temp = tempfile.mkdtemp(prefix="ab-ray-", dir="/tmp")  # short: Ray's socket paths must stay under 108 characters
    port, client_port = free_port(), free_port()  # ephemeral ports: never in Ray's worker port range (10002-19999)
    # Ray Client's proxy gives a client's own server 30 s to come up, then fails the connection with "Initialization
    # failure from server": on this 2-core machine under a full test load that start (a fresh Python importing Ray)
    # has taken longer, so the head waits as long as the test's other start-ups do.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RAY_USAGE_STATS_ENABLED": "0", "RAY_CLIENT_SERVER_CHECK_CHANNEL_TIMEOUT_S": "120", **AUTH}
    ray_cli = str(Path(sys.executable).with_name("ray"))
    head_log = open(Path(temp) / "head.log", "w")  # noqa: SIM115 - the head writes to it for its whole life
    head = subprocess.Popen(
        [ray_cli, "start", "--head", "--block", f"--port={port}", f"--ray-client-server-port={client_port}", "--num-cpus=2", '--resources={"ab_slot": 1}', "--num-gpus=0", "--include-dashboard=false", f"--temp-dir={temp}", "--disable-usage-stats"],
        env=env, stdout=head_log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    address = f"127.0.0.1:{port}"
    ready = [ray_cli, "status", f"--address={address}"]
    try:
        wait_until(
            lambda: head.poll() is not None or subprocess.run(ready, env=env, capture_output=True, timeout=60).returncode == 0,
            120,
            "the Ray head to start",
        )
        assert head.poll() is None, (Path(temp) / "head.log").read_text()[-3000:]
        yield address, f"ray://127.0.0.1:{client_port}", Path(temp)
    finally:
        started = _cluster_processes(temp)
        head.send_signal(signal.SIGTERM)  # `ray start --block` stops what it started
        try:
            head.wait(60)
        except subprocess.TimeoutExpired:
            head.kill()
        head_log.close()
        _, left = psutil.wait_procs(list(started), timeout=30)
        left += [p for p in _cluster_processes(temp) if p not in left]
        for process in left:  # never leave them behind, even when the assertion below fails
            try:
                process.kill()
            except psutil.NoSuchProcess:
                pass
        shutil.rmtree(temp, ignore_errors=True)
        assert not left, f"Ray processes left behind: {[(p.pid, p.name()) for p in left if p.is_running()]}"


@pytest.fixture(scope="module")
def ray_cluster(ray_head):
    return ray_head[0]


@pytest.fixture(scope="module")
def grid_sweeps(ray_cluster, tmp_path_factory):
    """The same 2×2 grid (adamole.max_threshold × adamole.num_experts, 2 seeds) through both executors."""
    root = tmp_path_factory.mktemp("grid")
    stores = {}
    for executor, extra in (("ray", ["--executor", "ray", "--ray-address", ray_cluster]), ("local", [])):
        runs = root / executor
        result = run_cli([*GRID, *extra], _env(runs), timeout=900)
        assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
        stores[executor] = {"uri": f"sqlite:///{runs / 'mlflow.db'}", "env": _env(runs), "output": result.stdout}
    return stores


def _by_trial(uri: str) -> dict:
    return {(r.data.tags["config_hash"], r.data.tags["seed"]): r for r in trial_runs(uri)}


def test_grid_sweep_records_four_points_with_their_values(grid_sweeps):
    runs = _by_trial(grid_sweeps["ray"]["uri"])
    adamole = [r for r in runs.values() if r.data.tags["method"] == "adamole"]
    assert len(adamole) == 8 and all(r.info.status == "FINISHED" for r in runs.values())  # 4 points × 2 seeds, + base
    points = {(r.data.params["method_config.max_threshold"], r.data.params["method_config.num_experts"]) for r in adamole}
    assert points == {("0.0625", "2"), ("0.0625", "4"), ("0.25", "2"), ("0.25", "4")}
    for run in adamole:
        tags, params = run.data.tags, run.data.params
        assert tags["grid"] == "adamole.max_threshold,adamole.num_experts"
        assert (tags["grid.adamole.max_threshold"], tags["grid.adamole.num_experts"]) == (
            params["method_config.max_threshold"],
            params["method_config.num_experts"],
        )
        assert (
            f"(adamole.max_threshold={tags['grid.adamole.max_threshold']}, adamole.num_experts={tags['grid.adamole.num_experts']})"
            in tags["mlflow.runName"]
        )
        assert tags["executor"] == "ray" and tags["pid"] != str(os.getpid())
    assert len({r.data.tags["ray_task"] for r in adamole}) == 8  # one Ray task per trial
    assert len({r.data.tags["pid"] for r in runs.values()}) == 2  # 9 trials on the 2 warm workers, one per CPU: no worker per trial
    sweep = [r for r in store_runs(grid_sweeps["ray"]["uri"]) if r.data.tags["kind"] == "sweep"]
    assert len(sweep) == 1 and sweep[0].data.tags["executor"] == "ray" and sweep[0].data.tags["grid"] == "adamole.max_threshold,adamole.num_experts"
    assert {r.data.tags["mlflow.parentRunId"] for r in runs.values()} == {sweep[0].info.run_id}
    assert "9 Ray tasks on 2 warm worker(s) (1 CPU, 0 GPU each), 1 node(s)" in grid_sweeps["ray"]["output"]


def test_ray_executor_records_what_the_local_executor_records(grid_sweeps):
    from mlflow.tracking import MlflowClient

    ray_runs, local_runs = _by_trial(grid_sweeps["ray"]["uri"]), _by_trial(grid_sweeps["local"]["uri"])
    assert ray_runs.keys() == local_runs.keys()
    clients = MlflowClient(grid_sweeps["ray"]["uri"]), MlflowClient(grid_sweeps["local"]["uri"])
    for key, remote in ray_runs.items():
        here = local_runs[key]
        assert remote.data.tags["mlflow.runName"] == here.data.tags["mlflow.runName"]
        assert remote.data.params == here.data.params
        assert remote.data.tags.keys() - PER_PROCESS - {"ray_task"} == here.data.tags.keys() - PER_PROCESS
        assert {k: v for k, v in remote.data.tags.items() if k not in PER_PROCESS} == {
            k: v for k, v in here.data.tags.items() if k not in PER_PROCESS
        }
        results = [{k: repr(v) for k, v in run.data.metrics.items() if k not in MEASURED} for run in (remote, here)]
        assert results[0] == results[1], key  # exact (repr: base's NaN losses compare equal): same seeds, same numbers
        losses = [[m.value for m in client.get_metric_history(run.info.run_id, "train/loss")] for client, run in zip(clients, (remote, here))]
        assert losses[0] == losses[1]
        assert _artifacts(clients[0], remote.info.run_id) == _artifacts(clients[1], here.info.run_id)
    first = next(iter(ray_runs))
    samples = [
        json.loads(Path(c.download_artifacts(r[first].info.run_id, "lm_eval/samples.json", tempfile.mkdtemp())).read_text())
        for c, r in zip(clients, (ray_runs, local_runs))
    ]
    assert samples[0] == samples[1]
    sweeps = [next(r for r in store_runs(g["uri"]) if r.data.tags["kind"] == "sweep") for g in (grid_sweeps["ray"], grid_sweeps["local"])]
    assert _artifacts(clients[0], sweeps[0].info.run_id) == _artifacts(clients[1], sweeps[1].info.run_id)
    assert "sensitivity/adamole.max_threshold.png" in _artifacts(clients[0], sweeps[0].info.run_id)
    table = [g["output"][g["output"].index("| method |") :] for g in (grid_sweeps["ray"], grid_sweeps["local"])]
    assert table[0] == table[1]  # the driver prints the same table (and sensitivity tables) as a local sweep


def _artifacts(client, run_id: str, path: str | None = None) -> list[str]:
    found: list[str] = []
    for item in client.list_artifacts(run_id, path):
        found += _artifacts(client, run_id, item.path) if item.is_dir else [item.path]
    return sorted(found)


def test_sensitivity_report_and_rerun_skip(grid_sweeps, ray_cluster):
    env = grid_sweeps["ray"]["env"]
    report = run_cli(["report", "--sensitivity", "adamole.max_threshold", "--format", "csv"], env)
    assert report.returncode == 0, report.stdout + report.stderr
    lines = [line.split(",") for line in report.stdout.splitlines()]
    assert lines[0][:8] == ["series", "key", "value", "column", "mean", "sd", "ci_low", "ci_high"]
    cells = {(line[0], line[2]): line for line in lines[1:] if line[0].startswith("adamole")}
    assert set(cells) == {(f"adamole (adamole.num_experts={n})", t) for n in (2, 4) for t in ("0.0625", "0.25")}
    assert all(line[10] == "2" and line[9] == "8" for line in cells.values())  # 2 seeds, 8 docs each
    assert any(line[0] == "base (zero-shot)" for line in lines[1:])
    reports = [r for r in store_runs(grid_sweeps["ray"]["uri"]) if r.data.tags["kind"] == "report"]
    from mlflow.tracking import MlflowClient

    assert "sensitivity/adamole.max_threshold.png" in _artifacts(MlflowClient(grid_sweeps["ray"]["uri"]), reports[-1].info.run_id)
    unknown = run_cli(["report", "--sensitivity", "lora.rank"], env)
    assert unknown.returncode == 2 and "unknown setting for --sensitivity 'lora.rank'" in unknown.stderr
    rerun = run_cli([*GRID, "--executor", "ray", "--ray-address", ray_cluster], env)
    assert rerun.returncode == 0 and rerun.stdout.count("already done, skipped") == 9 and "Ray tasks" not in rerun.stdout
    assert len(trial_runs(grid_sweeps["ray"]["uri"])) == 9


def _running_in_worker(uri: str, name: str):
    for run in trial_runs(uri, name):
        tags = run.data.tags
        if run.info.status == "RUNNING" and tags.get("executor") == "ray" and float(tags["heartbeat"]) > run.info.start_time / 1000 + 0.4:
            return run
    return None


def _worker(pid: int) -> psutil.Process:
    process = psutil.Process(pid)
    assert any("default_worker" in part or part.startswith("ray::") for part in process.cmdline()), process.cmdline()
    return process


@pytest.mark.slow
def test_killed_worker_is_retried_and_the_trial_recorded_once(ray_cluster, tmp_path):
    runs = tmp_path / "runs"
    uri, env = f"sqlite:///{runs / 'mlflow.db'}", _env(runs)
    args = ["run", *TINY, "--methods", "lora", "--max-steps", "300", "reference=false", "--executor", "ray", "--ray-address", ray_cluster]
    driver = start(args, env, tmp_path / "driver.log")
    name = "lora/fruit_or_color/seed0"
    victim = wait_until(lambda: _running_in_worker(uri, name), what="the trial to run in a Ray worker")
    _worker(int(victim.data.tags["pid"])).send_signal(signal.SIGKILL)  # the worker process itself, mid-training
    attempts = retried_once_after_a_dead_worker(driver, tmp_path / "driver.log", uri, name)
    assert f"its Ray worker died (pid {victim.data.tags['pid']}" in attempts[0].data.tags["error"]
    assert attempts[1].data.tags["pid"] != victim.data.tags["pid"]
    assert not [r for r in store_runs(uri) if r.info.status == "RUNNING"]
    report = run_cli(["report", "--format", "csv"], env)
    assert report.returncode == 0 and [line.split(",")[4] for line in report.stdout.splitlines() if line.startswith("lora,")] == [
        "fruit_or_color"
    ]  # counted once


@pytest.mark.slow
def test_ctrl_c_on_the_driver_cancels_tasks_and_marks_them_failed(ray_cluster, tmp_path):
    runs = tmp_path / "runs"
    uri, env = f"sqlite:///{runs / 'mlflow.db'}", _env(runs)
    args = [
        "run",
        *TINY,
        "--methods",
        "lora",
        "--seeds",
        "0,1",
        "--max-steps",
        "2000",
        "reference=false",
        "--executor",
        "ray",
        "--ray-address",
        ray_cluster,
    ]
    driver = start(args, env, tmp_path / "driver.log")
    names = ("lora/fruit_or_color/seed0", "lora/fruit_or_color/seed1")
    wait_until(lambda: all(_running_in_worker(uri, n) for n in names), what="both trials to run in Ray workers")
    driver.send_signal(signal.SIGINT)
    code, output = finish(driver, tmp_path / "driver.log", timeout=120)
    assert code == 130, output
    assert "cancelling 2 Ray task(s)" in output and "Run the same command again to resume" in output
    trials = trial_runs(uri)
    assert [r.info.status for r in trials] == ["FAILED", "FAILED"]
    assert {r.data.tags["failure"] for r in trials} == {"interrupted"} and all("KeyboardInterrupt" in r.data.tags["error"] for r in trials)
    assert [r.info.status for r in store_runs(uri) if r.data.tags["kind"] == "sweep"] == ["FAILED"]
    assert not [r for r in store_runs(uri) if r.info.status == "RUNNING"]


@pytest.mark.slow
def test_mix_group_is_one_ray_task_that_trains_once(ray_cluster, tmp_path):
    runs = tmp_path / "runs"
    uri, env = f"sqlite:///{runs / 'mlflow.db'}", _env(runs)
    args = ["run", "--model", "tiny-llama", "--tasks", "copa,fruit_or_color", "--limit", "4", "save_adapters=false", "train.batch_size=4",
            "--methods", "lora", "--mix", "--max-steps", "2", "--executor", "ray", "--ray-address", ray_cluster]  # fmt: skip
    result = run_cli(args, env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "3 Ray tasks" in result.stdout  # two zero-shot references, one mixture group
    mixture = [r for r in trial_runs(uri) if r.data.tags["method"] == "lora"]
    assert len(mixture) == 2 and len({r.data.tags["ray_task"] for r in mixture}) == 1
    assert {r.data.tags["train_tasks"] for r in mixture} == {"copa+fruit_or_color"}
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    curves = [[m.value for m in client.get_metric_history(r.info.run_id, "train/loss")] for r in mixture]
    assert curves[0] == curves[1] and len(curves[0]) == 2  # one adapter, trained once, shared by both trials


@pytest.mark.parametrize(
    "setting, expected",
    [
        ("resources.cpus_per_trial=4", "has resources.cpus_per_trial=4 CPU and resources.gpus_per_trial=0 GPU for a trial"),
        (
            "resources.custom.ab_slot=2",
            "has resources.cpus_per_trial=1 CPU and resources.gpus_per_trial=0 GPU, resources.custom.ab_slot=2 for a trial",
        ),
        ("resources.custom.nvme=1", "resources.custom.nvme=1 for a trial"),
    ],
)
def test_a_trial_that_fits_no_node_is_one_line_before_any_run(ray_cluster, tmp_path, setting, expected):
    runs = tmp_path / "runs"
    result = run_cli(["run", *TINY, "--methods", "lora", setting, "--executor", "ray", "--ray-address", ray_cluster], _env(runs))
    assert result.returncode == 2, result.stdout + result.stderr
    assert "no node of the Ray cluster (2 CPU/0 GPU) has " in result.stderr and expected in result.stderr, result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert store_runs(f"sqlite:///{runs / 'mlflow.db'}") == []


def _processes_with(variable: str, value: str) -> list[psutil.Process]:
    """Every process whose environment has variable=value: a driver's Ray instance and all its workers inherit it,
    and a worker left behind keeps it after its parent is gone."""
    found = []
    for process in psutil.process_iter():
        try:
            if process.environ().get(variable) == value:
                found.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_killing_the_driver_leaves_no_ray_process_behind(signum, tmp_path):
    """No --ray-address and a private RAY_TMPDIR (so no cluster `ray start` left here is found): the driver starts
    its own local instance (GCS, raylet, workers), which must go with it however it ends."""
    temp = tempfile.mkdtemp(prefix="ab-rk-", dir="/tmp")  # short: Ray's socket paths must stay under 108 characters
    runs = tmp_path / "runs"
    uri, env = f"sqlite:///{runs / 'mlflow.db'}", {**_env(runs), "RAY_TMPDIR": temp, "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    driver = start(["run", *TINY, "--methods", "lora", "--max-steps", "3000", "reference=false", "--executor", "ray"], env, tmp_path / "driver.log")
    try:
        wait_until(lambda: driver.poll() is not None or _running_in_worker(uri, "lora/fruit_or_color/seed0"), what="the trial to run in a Ray worker")
        assert driver.poll() is None, (tmp_path / "driver.log").read_text()[-3000:]
        helpers = [p for p in _processes_with("RAY_TMPDIR", temp) if p.pid != driver.pid]
        assert any(p.name() == "raylet" for p in helpers) and any(p.name() == "gcs_server" for p in helpers)
        driver.send_signal(signum)
        code, output = finish(driver, tmp_path / "driver.log", timeout=120)
        assert code == (-signal.SIGKILL if signum == signal.SIGKILL else 143), output
        # Ray's own reaper stops GCS and raylet; a worker notices its raylet gone within ORPHAN_POLL_SECONDS.
        wait_until(lambda: not _processes_with("RAY_TMPDIR", temp), 30, "the driver's Ray processes to exit")
        if signum == signal.SIGTERM:  # handled like Ctrl-C: the trial and the sweep end FAILED at once
            assert {r.info.status for r in store_runs(uri)} == {"FAILED"}, output
    finally:
        if driver.poll() is None:
            driver.kill()
        for process in _processes_with("RAY_TMPDIR", temp):  # never leave them behind, even when an assertion failed
            process.kill()
        shutil.rmtree(temp, ignore_errors=True)


def test_ray_client_address_runs_the_sweep_against_a_tracking_server(ray_head, tmp_path):
    """`--ray-address ray://HOST:PORT` with what the ray extra installs (ray[client]: grpcio), against the head's
    client server; the workers log to a real `mlflow server`, as they must when the driver is elsewhere."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}", "--artifacts-destination",
         str(tmp_path / "artifacts"), "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        wait_for_http(f"http://127.0.0.1:{port}/health")
        uri = f"http://127.0.0.1:{port}"
        env = cli_env(tmp_path / "runs", MLFLOW_TRACKING_URI=uri, **AUTH)
        args = ["run", *TINY, "--methods", "lora", "--seeds", "0,1", "--max-steps", "2", "reference=false", "resources.custom.ab_slot=1",
                "--executor", "ray", "--ray-address", ray_head[1]]  # fmt: skip
        result = run_cli(args, env)
        server_logs = "".join(log.read_text()[-2000:] for log in sorted(ray_head[2].glob("session_latest/logs/ray_client_server*.err")))
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:] + server_logs
        trials = trial_runs(uri)
        assert [t.info.status for t in trials] == ["FINISHED", "FINISHED"] and all("eval/acc" in t.data.metrics for t in trials)
        assert {t.data.tags["executor"] for t in trials} == {"ray"} and len({t.data.tags["pid"] for t in trials}) == 1
        assert "2 Ray tasks on 1 warm worker(s)" in result.stdout  # the cluster's one ab_slot: one trial at a time, on one worker
    finally:
        stop_tree(server.pid, grace_seconds=20)


@pytest.mark.slow
def test_a_killed_worker_resumes_from_its_checkpoint_and_equals_an_uninterrupted_run(
    ray_cluster,
    tmp_path,
    uninterrupted,  # noqa: F811 - the fixture imported from test_checkpoint_faults
):
    """A Ray worker SIGKILLed after its trial's first step checkpoint: the retry on a new worker resumes from it,
    and the finished trial's metrics, loss curve and adapter bytes equal an uninterrupted local run's."""
    runs = tmp_path / "runs"
    uri, env = f"sqlite:///{runs / 'mlflow.db'}", _env(runs)
    driver = start([*CHECKPOINTED, "train.checkpoint_every=10", "--executor", "ray", "--ray-address", ray_cluster], env, tmp_path / "driver.log")
    wait_until(lambda: _checkpoint(runs), what="a first checkpoint in the Ray worker")
    victim = wait_until(lambda: _running_in_worker(uri, "lora/fruit_or_color/seed0"), what="the trial's run in the worker")
    _worker(int(victim.data.tags["pid"])).send_signal(signal.SIGKILL)
    code, output = finish(driver, tmp_path / "driver.log", timeout=600)
    assert code == 0 and "Ray worker died (ActorDiedError)" in output, output
    resumed = _finished(runs, tmp_path)
    assert 10 <= resumed["resumed_from"] < STEPS
    _same_as(resumed, uninterrupted)
