"""The regression gate catches broken method math: record a LoRA suite, zero LoRA's scaling
(a plausible bug: the adapter trains but never reaches the output), rerun, expect exit 1."""

from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from rich.console import Console
from typer.testing import CliRunner

from adamole_bench.harness.check import regression
from adamole_bench.harness.check import suite as suites
from adamole_bench.methods.lora import Lora

pytestmark = pytest.mark.integration  # the regression gate rerunning real suites

LEARNS_FAST: dict[str, Any] = {  # LoRA reaches ~98% on fruit_or_color in 100 steps; untrained it is ~48%
    "model": "tiny-llama",
    "methods": ["lora"],
    "tasks": ["fruit_or_color"],
    "seeds": [0],
    "save_adapters": False,
    "reference": False,  # the suites record one method; no zero-shot base row needed
    "method_options": {"lora": {"dropout": 0.0}},
    "train": {"max_steps": 100, "lr": 3e-3, "batch_size": 16, "warmup_steps": 0},
    "eval": {"limit": 64, "batch_size": 32},
}


def _zero_lora_scaling(original_apply):
    def apply(self, model):
        peft_model = original_apply(self, model)
        for module in peft_model.modules():
            if isinstance(getattr(module, "scaling", None), dict):
                module.scaling = {name: 0.0 for name in module.scaling}
        return peft_model

    return apply


def test_check_fails_when_lora_math_is_broken(tmp_path, monkeypatch):
    from adamole_bench.cli import app

    monkeypatch.setenv("ADAMOLE_BENCH_RUNS", str(tmp_path / "runs"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / "lora.yaml").write_text(yaml.safe_dump(LEARNS_FAST))
    suite_file = tmp_path / "suite.yaml"
    suite_file.write_text(yaml.safe_dump({"config": "lora.yaml", "torch_threads": 1, "default_tolerance": 0.05}))
    suite = suites.load_suite(suite_file)
    suites.record(suite, regression.rerun(suite, Console(quiet=True)))
    recorded = yaml.safe_load(suite_file.read_text())["records"][0]
    assert recorded["mean"] > 0.6, "the suite must learn, or breaking LoRA could not show"

    threads = torch.get_num_threads()
    monkeypatch.setattr(Lora, "apply", _zero_lora_scaling(Lora.apply))
    result = CliRunner().invoke(app, ["check", "--suite", str(suite_file)], env={"COLUMNS": "160"})
    assert result.exit_code == 1, result.output
    assert "regressed" in result.output
    assert torch.get_num_threads() == threads  # the suite's torch_threads applied only during the rerun


def test_suite_file_errors_are_one_line_user_errors(tmp_path):
    from adamole_bench.cli import app

    bad = tmp_path / "suite.yaml"
    bad.write_text("records: []\n")
    result = CliRunner().invoke(app, ["check", "--suite", str(bad)])
    assert result.exit_code == 2 and "must name the experiment config" in result.output
    missing = CliRunner().invoke(app, ["check", "--suite", str(tmp_path / "nope.yaml")])
    assert missing.exit_code == 2 and "not found" in missing.output
    bad.write_text(yaml.safe_dump({"config": "x.yaml", "records": [{"method": "lora"}]}))
    with pytest.raises(regression.UserError, match="record 1 lacks"):
        suites.load_suite(bad)


def test_check_catches_a_broken_router_that_accuracy_alone_misses(tmp_path, monkeypatch):
    """AdaMoLE with τ added instead of subtracted still learns the easy task; its loss curve drifts."""
    from adamole_bench.cli import app
    from adamole_bench.methods import routing

    monkeypatch.setenv("ADAMOLE_BENCH_RUNS", str(tmp_path / "runs"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    config = {**LEARNS_FAST, "methods": ["adamole"], "method_options": {}, "train": {**LEARNS_FAST["train"], "max_steps": 40}}
    (tmp_path / "adamole.yaml").write_text(yaml.safe_dump(config))
    suite_file = tmp_path / "suite.yaml"
    suite_file.write_text(yaml.safe_dump({"config": "adamole.yaml", "torch_threads": 1}))
    suite = suites.load_suite(suite_file)
    suites.record(suite, regression.rerun(suite, Console(quiet=True)))
    assert yaml.safe_load(suite_file.read_text())["records"][0]["train_loss_mean"] > 0

    def broken(gate_logits, threshold_logits, max_threshold):
        probs = gate_logits.softmax(dim=-1)
        gaps = probs + torch.sigmoid(threshold_logits) * max_threshold  # the bug: + instead of −
        selected = (gaps >= 0).to(probs.dtype)
        return routing.Routing(routing.renormalise(gaps * selected), selected, gaps, None)

    monkeypatch.setattr(routing, "adaptive_threshold", broken)
    result = CliRunner().invoke(app, ["check", "--suite", str(suite_file)], env={"COLUMNS": "200"})
    assert result.exit_code == 1, result.output
    assert "drifted" in result.output or "regressed" in result.output


def test_loss_drift_rule():
    suite = suites.Suite(path=Path("s.yaml"), config_path=Path("c.yaml"), loss_tolerance=0.05)
    key = {"model": "m", "method": "lora", "task": "t", "protocol": "letter", "config_hash": "h"}
    suite.records = [{**key, "seeds": [0], "values": [0.9], "mean": 0.9, "train_loss": [1.0], "train_loss_mean": 1.0}]
    same_accuracy = [{**key, "seed": 0, "acc": 0.9}]
    assert regression.compare(suite, [{**same_accuracy[0], "train_loss": 1.04}])[0].status == "ok"
    drifted = regression.compare(suite, [{**same_accuracy[0], "train_loss": 1.2}])[0]
    assert drifted.status == "drifted" and drifted.fails and drifted.loss_change is not None and abs(drifted.loss_change - 0.2) < 1e-9
    assert regression.compare(suite, [{**same_accuracy[0], "train_loss": None}])[0].status == "ok"  # e.g. base
