"""`adamole-bench ui` stopped by Ctrl-C (SIGINT) or SIGTERM leaves no process behind: MLflow's UI starts a
uvicorn server, a job runner and several huey consumers, and every one of them must be gone."""

import signal
import subprocess
import sys

import psutil
import pytest

from adamole_bench.tests.fault_tools import cli_env, free_port, wait_for_http, wait_until

pytestmark = pytest.mark.integration  # the MLflow UI's process tree under real signals


def _command(process: psutil.Process) -> str:
    """A child's command line, or "" for one that exited (or is a zombie) between listing and reading:
    MLflow starts short-lived helpers beside its workers."""
    try:
        return " ".join(process.cmdline())
    except (psutil.ZombieProcess, psutil.NoSuchProcess, psutil.AccessDenied):
        return ""


@pytest.mark.parametrize("signum", [signal.SIGINT, pytest.param(signal.SIGTERM, marks=pytest.mark.slow)], ids=["SIGINT", "SIGTERM"])
def test_ui_stops_every_process_it_started(tmp_path, signum):
    port = free_port()
    ui = subprocess.Popen([sys.executable, "-m", "adamole_bench.cli", "ui", "--port", str(port)], env=cli_env(tmp_path / "runs"),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:
        wait_for_http(f"http://127.0.0.1:{port}/health")
        started = wait_until(lambda: [p for p in psutil.Process(ui.pid).children(recursive=True) if "huey" in _command(p)] and
                             psutil.Process(ui.pid).children(recursive=True), 60, "MLflow's workers")  # fmt: skip
        ui.send_signal(signum)
        output = ui.communicate(timeout=60)[0]
    finally:
        if ui.poll() is None:
            ui.kill()
    assert ui.returncode == {signal.SIGINT: 130, signal.SIGTERM: 143}[signum], output
    assert "MLflow UI stopped" in output and "Traceback" not in output
    survivors = [p for p in started if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not survivors, [_command(p) for p in survivors]
