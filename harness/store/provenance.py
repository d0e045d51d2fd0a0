"""What produced a number: code version, packages, hardware. Recorded with every run."""

import hashlib
import json
import platform
import subprocess
from functools import cache
from importlib.metadata import PackageNotFoundError, version

import torch

from ...base.machine import cpu_name, numerics_class
from ...base.paths import package_root

PACKAGES = ("torch", "transformers", "peft", "lm_eval", "datasets", "mlflow", "accelerate", "tokenizers", "numpy")


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=package_root(), capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


@cache
def code_version() -> dict[str, str]:
    commit = _git("rev-parse", "HEAD")
    if commit is None:
        return {"git_commit": "unknown", "git_dirty": "unknown", "adamole_bench_version": _installed_version()}
    dirty = bool(_git("status", "--porcelain", "--untracked-files=no"))
    # mlflow.source.git.commit: the key the MLflow UI shows; the fluent API sets it, our client API must
    return {"git_commit": commit, "git_dirty": str(dirty).lower(), "mlflow.source.git.commit": commit}


def _installed_version() -> str:
    """This package's version as installed (pip's metadata), for a copy without git."""
    try:
        return version("adamole-bench")
    except PackageNotFoundError:
        return "unknown"


@cache
def package_versions() -> dict[str, str]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = version(name.replace("_", "-"))
        except PackageNotFoundError:
            versions[name] = "missing"
    return versions


def hardware(device: torch.device) -> dict[str, str]:
    info = {"python": platform.python_version(), "platform": platform.platform(), "torch_threads": str(torch.get_num_threads())}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    info["cpu"] = cpu_name()
    info["cpu_numerics"] = numerics_class()  # fp32 numbers repeat bitwise only within one class (base/machine.py)
    return info


def eval_protocol_tags(results_json: dict) -> dict[str, str]:
    """lm-eval's resolved task config (prompt, choices, delimiters, metrics) as a hash per task.

    Two runs with equal hashes were scored the same way; the machine-specific YAML path is left out.
    """
    tags = {}
    for task, task_config in results_json.get("configs", {}).items():
        portable = {**task_config, "metadata": {k: v for k, v in (task_config.get("metadata") or {}).items() if k != "config_source"}}
        digest = hashlib.sha256(json.dumps(portable, sort_keys=True, default=str).encode()).hexdigest()[:12]
        tags[f"eval_task_hash.{task}"] = digest
        tags[f"eval_task_version.{task}"] = str(results_json.get("versions", {}).get(task))
    return tags
