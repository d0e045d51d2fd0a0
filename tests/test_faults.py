"""Faults done for real: a sweep process SIGKILLed and SIGTERMed mid-trial, a stale run from another
machine, a diverging trial, a disk that fills up mid-sweep. Nothing is left RUNNING, nothing diverged is
counted, a rerun finishes the job."""

import csv
import io
import math
import os
import signal
import subprocess
import time

import pytest

from adamole_bench.base.errors import Diverged
from adamole_bench.harness.store.tracking import Tracker
from adamole_bench.harness.train.loop import check_finite
from adamole_bench.tests.fault_tools import TINY, cli_env, finish, run_cli, start, store_runs, trial_runs, wait_until

pytestmark = pytest.mark.integration  # real processes killed, terminated and out of disk

LORA = "lora/fruit_or_color/seed0"
SWEEP = ["run", *TINY, "--methods", "base,lora", "--max-steps", "300"]  # long enough to be killed mid-training (40 steps take 1 s)


def _running(uri: str, name: str, process: subprocess.Popen):
    """The process's RUNNING run of a trial once the heartbeat thread has beaten (so it is in the trial)."""
    for run in trial_runs(uri, name):
        tags = run.data.tags
        if run.info.status == "RUNNING" and tags.get("pid") == str(process.pid) and float(tags["heartbeat"]) > run.info.start_time / 1000 + 0.4:
            return run
    return None


def test_sigkill_then_sigterm_then_rerun(tmp_path):
    runs = tmp_path / "runs"
    uri, env = f"sqlite:///{runs / 'mlflow.db'}", cli_env(runs)

    # 1. SIGKILL in the middle of training: nothing can run, so the runs stay RUNNING with a heartbeat.
    killed = start(SWEEP, env, tmp_path / "killed.log")
    first = wait_until(lambda: _running(uri, LORA, killed), what="the lora trial to run")
    beat = float(first.data.tags["heartbeat"])
    wait_until(lambda: float(trial_runs(uri, LORA)[0].data.tags["heartbeat"]) > beat, 10, "a later heartbeat")
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    left = {"sweep" if r.data.tags["kind"] == "sweep" else r.data.tags["mlflow.runName"]: r for r in store_runs(uri) if r.info.status == "RUNNING"}
    assert set(left) == {"sweep", LORA}
    assert left[LORA].data.tags["pid"] == str(killed.pid) and left[LORA].data.tags["host"]

    # 2. The rerun marks both FAILED (dead pid on this host), retries the trial; SIGTERM stops it cleanly.
    terminated = start(SWEEP, env, tmp_path / "terminated.log")
    wait_until(lambda: _running(uri, LORA, terminated), what="the retried lora trial to run")
    terminated.send_signal(signal.SIGTERM)
    code, output = finish(terminated, tmp_path / "terminated.log", timeout=60)
    assert code == 143, output
    assert "terminated (SIGTERM)" in output and "Run the same command again to resume" in output and "Traceback" not in output
    assert output.count("(left RUNNING: its process died") == 2  # the sweep and the trial of run 1
    attempts = trial_runs(uri, LORA)
    assert [r.info.status for r in attempts] == ["FAILED", "FAILED"]
    assert f"its process died (pid {killed.pid}" in attempts[0].data.tags["error"]
    assert attempts[1].data.tags["failure"] == "terminated" and "SIGTERM" in attempts[1].data.tags["error"]
    sweeps = [r for r in store_runs(uri) if r.data.tags["kind"] == "sweep"]
    assert [r.info.status for r in sweeps] == ["FAILED", "FAILED"] and "SIGTERM" in sweeps[1].data.tags["error"]

    # 3. A clean rerun finishes the trial (base stays skipped), and nothing is RUNNING any more.
    done = run_cli(SWEEP, env)
    assert done.returncode == 0, done.stdout[-3000:]
    assert "already done, skipped" in done.stdout  # base, finished in run 1
    assert [r.info.status for r in trial_runs(uri, LORA)] == ["FAILED", "FAILED", "FINISHED"]
    assert [r.data.tags["claim_attempt"] for r in trial_runs(uri, LORA)] == ["0", "1", "2"]
    assert not [r for r in store_runs(uri) if r.info.status == "RUNNING"]
    report = run_cli(["report", "--format", "csv"], env)
    assert report.returncode == 0 and report.stdout.count("fruit_or_color,") == 2  # base and lora, once each


def _foreign_run(tracker: Tracker, name: str, heartbeat_age: float) -> str:
    """A RUNNING trial run as another machine would leave it: another machine id, a heartbeat `age` s old."""
    run_id = tracker.create_run(name, {"kind": "trial", "identity": "feedc0ffee00", "seed": "0"})
    tracker.set_tags(run_id, {"process": "other-host:other-boot:pid:[1]|4242|99", "host": "other-host", "pid": "4242",
                              "heartbeat": str(time.time() - heartbeat_age)})  # fmt: skip
    return run_id


def test_heartbeat_timeout_fails_runs_of_other_machines_only_when_old(tmp_path, monkeypatch):
    monkeypatch.setenv("ADAMOLE_BENCH_STALE_AFTER_SECONDS", "60")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker("adamole-bench", uri=uri)
    old, fresh = _foreign_run(tracker, "old", heartbeat_age=120), _foreign_run(tracker, "fresh", heartbeat_age=5)
    again = Tracker("adamole-bench", uri=uri)  # what every run/report/check does on opening the store
    assert [name for name, _ in again.reconciled] == ["old"]
    status = {r.info.run_id: r for r in store_runs(uri)}
    assert status[old].info.status == "FAILED" and "no heartbeat for 12" in status[old].data.tags["error"]
    assert status[fresh].info.status == "RUNNING"  # another machine's pid cannot be checked: only its heartbeat
    assert again.claim_trial("feedc0ffee00", 0, "x", {}) is None  # and it still holds its trial


def test_diverged_trial_is_failed_never_counted_and_retried(cli, runs_dir, search_runs):
    args = ["run", *TINY, "--methods", "base,lora", "--max-steps", "6", "train.lr=1e30"]
    result = cli(*args)
    assert result.exit_code == 3, result.output
    assert "diverged at step" in result.output and "1 of 2 trials failed, 1 diverged" in result.output
    trials = search_runs().set_index("tags.method")
    assert trials.loc["lora", "status"] == "FAILED" and trials.loc["lora", "tags.failure"] == "diverged"
    assert "Diverged: diverged at step" in trials.loc["lora", "tags.error"]
    assert trials.loc["base", "status"] == "FINISHED"
    table = list(csv.DictReader(io.StringIO(cli("report", "--format", "csv").output)))
    assert {row["method"] for row in table} == {"base"} and {row["column"] for row in table} == {"fruit_or_color"}
    rerun = cli(*args)  # a diverged trial is not "done": the rerun tries it again (and it diverges again)
    assert rerun.exit_code == 3 and "already done, skipped" in rerun.output and rerun.output.count("diverged at step") == 1


def test_grad_scaler_overflow_is_not_divergence():
    check_finite(5, loss=2.0, aux_loss=0.0, grad_norm=math.inf, grads_scaled=True)  # the scaler skips that step
    with pytest.raises(Diverged, match="diverged at step 5: grad norm is inf"):
        check_finite(5, loss=2.0, aux_loss=0.0, grad_norm=math.inf)
    with pytest.raises(Diverged, match="loss is nan"):
        check_finite(5, loss=math.nan, aux_loss=0.0, grad_norm=1.0, grads_scaled=True)


@pytest.fixture
def small_disk(tmp_path):
    """A 64 MB tmpfs: a disk that really fills up (needs root to mount)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mount)]).returncode:
        pytest.skip("mounting a tmpfs needs root")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=True)


def _fill(folder) -> None:
    """Write until the disk says ENOSPC."""
    with open(folder / "filler", "wb") as handle:
        try:
            while True:
                handle.write(b"\0" * 2**20)
                handle.flush()
        except OSError:
            pass


@pytest.mark.slow
def test_disk_filling_up_mid_sweep_fails_that_trial_and_keeps_the_table(small_disk, tmp_path):
    runs = small_disk / "runs"
    uri, env = f"sqlite:///{runs / 'mlflow.db'}", cli_env(runs)
    args = ["run", *TINY, "--methods", "base,lora", "--seeds", "0,1", "--max-steps", "60"]
    sweep = start(args, env, tmp_path / "full.log")
    wait_until(lambda: _running(uri, LORA, sweep), what="the lora trial to run")  # base/seed0 has finished
    _fill(small_disk)
    code, output = finish(sweep, tmp_path / "full.log")
    assert code == 2, output
    assert "disk full" in output and "Traceback" not in output
    assert "| base (zero-shot) |" in output  # the table of what finished is still printed
    (small_disk / "filler").unlink()
    done = run_cli(args, env)
    assert done.returncode == 0, done.stdout[-3000:]
    finished = [r.data.tags["mlflow.runName"] for r in trial_runs(uri) if r.info.status == "FINISHED"]
    assert sorted(finished) == sorted({*finished}) and len(finished) == 4  # every trial once
    assert not [r for r in store_runs(uri) if r.info.status == "RUNNING"]


def test_full_or_read_only_store_fails_before_any_work(cli, small_disk, monkeypatch):
    monkeypatch.setenv("ADAMOLE_BENCH_RUNS", str(small_disk / "runs"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (small_disk / "runs").mkdir()
    _fill(small_disk)
    full = cli("run", *TINY, "--methods", "base")
    assert full.exit_code == 2 and f"MLflow store folder {small_disk / 'runs'} is full" in full.output, full.output
    (small_disk / "filler").unlink()
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    read_only = cli("run", *TINY, "--methods", "base")
    assert read_only.exit_code == 2 and "is read-only" in read_only.output, read_only.output
    assert "Traceback" not in full.output + read_only.output
