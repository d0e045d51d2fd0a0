"""scripts/gpu_check.sh without a GPU: it refuses in one line, and its dry run proves the wiring."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "gpu_check.sh"


def _script(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env={**os.environ, "PYTHON": sys.executable}, timeout=120)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: the script would run for real")
def test_without_cuda_the_gpu_check_stops_in_one_line_with_exit_2(tmp_path):
    done = _script(str(tmp_path / "out"))
    assert done.returncode == 2 and done.stdout == ""
    assert len(done.stderr.strip().splitlines()) == 1 and "CUDA is not available" in done.stderr
    assert not list((tmp_path / "out").glob("results-gpu-*"))


def test_dry_run_lists_every_step_with_flags_the_commands_take_and_writes_the_results_file(tmp_path, cli):
    done = _script("--dry-run", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr
    steps = dict(re.findall(r"^\[dry run\] (\w+) \(≤ \d+ s\): (.*)$", done.stdout, flags=re.M))
    assert list(steps) == ["cuda_tests", "bench", "mission", "plan"]
    for name in ("bench", "mission"):  # every flag the script passes exists on that command
        command = steps[name].split("adamole_bench.cli ", 1)[1].split()[0]
        help_text = cli(command, "--help").output
        for flag in re.findall(r"(--[a-z-]+)", steps[name].split(command, 1)[1]):
            assert flag in help_text, (name, flag)
    assert "-m cuda tests/test_cuda.py" in steps["cuda_tests"] and (ROOT / "tests" / "test_cuda.py").exists()
    (results,) = (tmp_path / "out").glob("results-gpu-*.json")
    recorded = json.loads(results.read_text())
    assert recorded["dry_run"] is True and [s["name"] for s in recorded["steps"]] == list(steps)
    assert all(s["status"] == "skipped" for s in recorded["steps"]) and results.with_suffix(".md").exists()
