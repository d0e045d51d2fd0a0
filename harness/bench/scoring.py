"""The bench's evaluation throughput: our in-memory HFLM path against lm-eval's own CLI on the same
model (saved to a temporary folder) and the same task YAMLs (`--include_path`), both in fp32."""

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from ...tasks.registry import TASK_DIR
from ...tasks.sources import load_task
from ..evaluate.scoring import evaluate, lm_eval_task_name
from ..model.loading import BaseModel
from ..settings.config import EvalConfig


def _requests(samples: list[dict]) -> int:
    """Loglikelihood requests: one per answer choice per doc."""
    return sum(len(sample["loglikelihoods"]) for sample in samples)


def measure_evaluation(settings, base: BaseModel, device: torch.device) -> dict:
    data = load_task(settings.eval_task)
    config = EvalConfig(batch_size=settings.eval_batch_size, limit=settings.eval_limit)
    model = base.model.to(device).eval()  # type: ignore[arg-type]  # transformers' functools.wraps on PreTrainedModel.to hides its self from mypy; the rows are gone: the base itself, no copy
    evaluate(model, base.tokenizer, data, EvalConfig(batch_size=settings.eval_batch_size, limit=2))  # warm lm-eval's caches
    started = time.perf_counter()
    result = evaluate(model, base.tokenizer, data, config)
    seconds = time.perf_counter() - started
    requests = _requests(result.samples)
    report: dict[str, Any] = {
        "task": result.lm_eval_task,
        "docs": len(result.samples),
        "requests": requests,
        "in_memory": {"seconds": seconds, "requests_per_second": requests / seconds, "acc": result.metrics.get("acc")},
    }
    if settings.lm_eval_cli:
        report["lm_eval_cli"] = _time_lm_eval_cli(
            settings, base, device, lm_eval_task_name(data.spec.name, config.protocol), TASK_DIR / "lm_eval", requests
        )
        report["in_memory_speedup"] = report["lm_eval_cli"]["wall_seconds"] / seconds
    return report


def _time_lm_eval_cli(settings, base: BaseModel, device: torch.device, task: str, include: Path, requests: int) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        saved, output = Path(folder) / "model", Path(folder) / "output"
        base.model.save_pretrained(saved)
        base.tokenizer.save_pretrained(saved)
        command = [
            sys.executable, "-m", "lm_eval",
            "--model", "hf", "--model_args", f"pretrained={saved},dtype=float32",
            "--tasks", task, "--include_path", str(include),
            "--limit", str(settings.eval_limit), "--batch_size", str(settings.eval_batch_size),
            "--device", str(device), "--output_path", str(output),
        ]  # fmt: skip
        started = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, env=os.environ.copy(), check=False)
        wall = time.perf_counter() - started
        if done.returncode != 0:
            return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"}
        results = json.loads(next(output.rglob("results_*.json")).read_text())
    evaluation = float(results.get("total_evaluation_time_seconds", "nan"))
    return {
        "wall_seconds": wall,  # process start, imports, task indexing, model load, scoring
        "evaluation_seconds": evaluation,  # lm-eval's own clock (model load + scoring)
        "requests_per_second": requests / wall,
        "acc": results["results"][task].get("acc,none"),
    }
