"""`adamole-bench ui` serves the local store's runs on 127.0.0.1 (slow: the server takes 10-60 s to start)."""

import json
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_ui_lists_recorded_runs(cli, runs_dir, tmp_path):
    assert cli("run", "--model", "tiny-llama", "--methods", "base", "--tasks", "fruit_or_color", "--limit", "4").exit_code == 0
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "adamole_bench.cli", "ui", "--port", str(port)], cwd=tmp_path)
    try:
        deadline = time.time() + 120
        while True:
            try:
                request = urllib.request.Request(
                    f"http://127.0.0.1:{port}/ajax-api/2.0/mlflow/runs/search",
                    data=json.dumps({"experiment_ids": ["1"]}).encode(),
                    headers={"Content-Type": "application/json"},
                )
                runs = json.loads(urllib.request.urlopen(request, timeout=5).read())["runs"]
                break
            except OSError:
                assert time.time() < deadline, "MLflow UI did not come up in 120 s"
                time.sleep(1)
        assert {r["info"]["run_name"] for r in runs} >= {"base/fruit_or_color/seed0"}
    finally:
        server.terminate()
        server.wait(timeout=30)
