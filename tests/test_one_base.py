"""One base model per process (harness/model/one_base.py): trials adapt the loaded base in place and leave it
exactly as it was, so trials run one after another give bitwise the numbers each gives in a fresh process."""

import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import torch
from rich.console import Console
from safetensors.torch import load_file
from torch import nn

from adamole_bench.harness.model.loading import load_base_model
from adamole_bench.harness.model.one_base import Attachment
from adamole_bench.harness.run import sweep
from adamole_bench.harness.run.trials import TrialState, attempt
from adamole_bench.harness.settings.load import load_config
from adamole_bench.harness.store.tracking import Tracker
from adamole_bench.methods.registry import Method, build_method
from adamole_bench.tests.fault_tools import cli_env

if TYPE_CHECKING:  # transformers is slow to import; here its classes are annotations only
    from transformers import PreTrainedModel

pytestmark = pytest.mark.integration  # trials in one process against fresh processes

METHODS = ["lora", "mole", "adamole", "soft-moa", "sparse-moa", "base"]  # base last: scored after five adapters came off
RUN = ["--model", "tiny-llama", "--tasks", "fruit_or_color", "--seeds", "0", "--max-steps", "3", "--limit", "16", "reference=false"]
MEASURED = ("train/seconds", "train/tokens_per_second", "eval/seconds", "memory/peak_mb", "memory/peak_delta_mb")  # clocks, not results
IDS = torch.randint(3, 259, (2, 11), generator=torch.Generator().manual_seed(0))


def base_state(model: "PreTrainedModel") -> dict:
    """Everything a trial could leave behind on the base: weights (as bits), modules, flags, hooks, attributes, config."""
    return {
        "weights": {name: (t.dtype, t.device, t.detach().contiguous().view(torch.uint8).clone()) for name, t in model.state_dict().items()},
        "modules": [
            (name, type(m), m.training, sorted(vars(m)), len(m._forward_hooks) + len(m._forward_pre_hooks)) for name, m in model.named_modules()
        ],
        "parameters": [(name, id(p), p.requires_grad, p.data_ptr()) for name, p in model.named_parameters()],
        "config": model.config.to_dict(),
    }


def assert_same_state(before: dict, after: dict) -> None:
    assert before["weights"].keys() == after["weights"].keys()
    for name, (dtype, device, bits) in before["weights"].items():
        assert (dtype, device) == after["weights"][name][:2] and torch.equal(bits, after["weights"][name][2]), name
    for key in ("modules", "parameters", "config"):
        assert before[key] == after[key], key


def recorded(uri: str, experiment: str, folder: Path) -> dict[str, dict]:
    """Per method: its settings' hash, metrics (clocks left out), loss curve, log-likelihoods and adapter bits."""
    tracker = Tracker(experiment, uri=uri)
    out = {}
    for run in tracker.client.search_runs([tracker.experiment_id], "tags.kind = 'trial' and attributes.status = 'FINISHED'"):
        run_id, method = run.info.run_id, run.data.tags["method"]
        local = Path(tracker.client.download_artifacts(run_id, "", str(folder / run_id)))
        adapter = local / "adapter" / "adapter_model.safetensors"
        out[method] = {
            "config_hash": run.data.tags["config_hash"],
            "metrics": {k: v.hex() for k, v in run.data.metrics.items() if k not in MEASURED},  # bits; nan equals nan
            "losses": [m.value for m in sorted(tracker.client.get_metric_history(run_id, "train/loss"), key=lambda m: m.step)],
            "loglikelihoods": [s["loglikelihoods"] for s in json.loads((local / "lm_eval" / "samples.json").read_text())],
            "adapter": {k: v.view(torch.uint8) for k, v in load_file(adapter).items()} if adapter.exists() else None,
        }
    return out


@pytest.fixture(scope="module")
def one_after_another(tmp_path_factory):
    """Every method in one process on one TrialState, through `attempt` as the local executor runs them."""
    root = tmp_path_factory.mktemp("sequential")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the fresh processes (OMP_NUM_THREADS=1): the same kernels, the same sums
    try:
        config = load_config(
            None, ["reference=false"], model="tiny-llama", methods=METHODS, tasks=["fruit_or_color"], seeds=[0], train__max_steps=3, eval__limit=16
        )
        state = TrialState(config)
        before = base_state(state.base().model)
        tracker = Tracker(config.experiment, uri=f"sqlite:///{root / 'mlflow.db'}")
        sweep_id = tracker.create_run("sequential", {"kind": "sweep"})
        trials = sweep.plan(config)
        assert [t.method for t in trials] == METHODS
        outcomes = [attempt(trial, state, tracker, sweep_id, Console(quiet=True)) for trial in trials]
        assert [o and o.status for o in outcomes] == ["finished"] * len(METHODS), [o and o.error for o in outcomes]
        after = base_state(state.base().model)
    finally:
        torch.set_num_threads(threads)
    return {"before": before, "after": after, "records": recorded(tracker.uri, config.experiment, root / "artifacts")}


def test_trials_leave_the_base_bit_identical(one_after_another):
    assert_same_state(one_after_another["before"], one_after_another["after"])


def test_trials_in_one_process_give_what_each_gives_in_a_fresh_process(one_after_another, tmp_path):
    sequential = one_after_another["records"]
    for method in METHODS:
        store = tmp_path / method
        done = subprocess.run(
            [sys.executable, "-m", "adamole_bench.cli", "run", "--methods", method, *RUN],
            env=cli_env(store),
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        fresh = recorded(f"sqlite:///{store / 'mlflow.db'}", "adamole-bench", tmp_path / f"{method}-artifacts")[method]
        mine = sequential[method]
        assert fresh["config_hash"] == mine["config_hash"], method  # the same settings, so the same trial
        assert fresh["losses"] == mine["losses"] and len(mine["losses"]) == (0 if method == "base" else 3), method
        assert fresh["loglikelihoods"] == mine["loglikelihoods"] and len(mine["loglikelihoods"]) == 16, method
        # `run` also logs the sweep's table, which writes each trial's Wilson interval on its run (bundle.trial_intervals)
        by_table = {"eval/acc_ci_low", "eval/acc_ci_high"}
        assert {k: v for k, v in fresh["metrics"].items() if k not in by_table} == mine["metrics"], method
        if method == "base":
            assert mine["adapter"] is None
        else:
            assert fresh["adapter"].keys() == mine["adapter"].keys(), method
            assert all(torch.equal(fresh["adapter"][k], mine["adapter"][k]) for k in mine["adapter"]), method


def logits(model: nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=IDS).logits


@pytest.mark.parametrize("name", METHODS)
def test_an_adapter_comes_off_exactly_and_goes_back_on(name):
    """Detached, the base is as loaded and scores as before; attached again (a --mix group), the adapter scores as before."""
    base = load_base_model("tiny-llama").model.eval()
    before, plain = base_state(base), logits(base)
    attachment = Attachment(base, build_method(name).apply)
    with torch.no_grad():
        for parameter in attachment.model.parameters():
            if parameter.requires_grad:  # off their init: LoRA B and MoA's gates start at zero
                parameter.add_(torch.randn_like(parameter) * 0.1)
    adapted = logits(attachment.model.eval())  # new adapter modules start in train mode: dropout off
    assert not torch.equal(adapted, plain) or name == "base"
    attachment.detach()
    assert_same_state(before, base_state(base))
    assert torch.equal(logits(base), plain)
    attachment.attach()
    assert torch.equal(logits(attachment.model), adapted)
    attachment.detach()
    assert_same_state(before, base_state(base))


@dataclass
class NormTuningConfig:
    layers: list[str] = field(default_factory=lambda: ["norm"])


class NormTuning(Method):
    """A method that trains base weights (the final norm) and hooks the model: what a third party might write."""

    name = "norm-tuning"
    config_class = NormTuningConfig

    def apply(self, model: nn.Module) -> nn.Module:
        model.requires_grad_(False)
        model.get_parameter("model.norm.weight").requires_grad_(True)
        model.get_submodule("model.norm").register_forward_hook(lambda module, args, output: output * 2)
        model.added_by_method = True  # type: ignore[assignment]  # torch types Module.__setattr__ values as Tensor | Module; any value works
        return model


def test_a_method_that_trains_base_weights_trains_a_copy():
    base = load_base_model("tiny-llama").model.eval()
    before, plain = base_state(base), logits(base)
    attachment = Attachment(base, NormTuning(NormTuningConfig()).apply)
    with torch.no_grad():
        base.model.norm.weight.add_(1.0)  # what an optimizer step does
    adapted = logits(attachment.model)
    attachment.detach()
    assert_same_state(before, base_state(base))
    assert torch.equal(logits(base), plain) and not hasattr(base, "added_by_method")
    attachment.attach()
    assert torch.equal(logits(base), adapted)
    attachment.detach()


def test_a_method_that_fails_while_adapting_leaves_the_base_as_it_was():
    base = load_base_model("tiny-llama").model

    def half_done(model):
        NormTuning(NormTuningConfig()).apply(model)
        raise RuntimeError("adapting failed")

    before = base_state(base)
    with pytest.raises(RuntimeError, match="adapting failed"):
        Attachment(base, half_done)
    assert_same_state(before, base_state(base))


def test_bench_rows_have_their_own_modules_over_the_base_weights():
    """No row copies the base: every frozen weight a row computes with is the base's own tensor."""
    from adamole_bench.harness.bench.suite import BenchSettings
    from adamole_bench.harness.bench.training import build_rows
    from adamole_bench.harness.model.precision import Precision

    base = load_base_model("tiny-llama")
    weights = {p.data_ptr() for p in base.model.parameters()}
    rows = build_rows(BenchSettings(methods=["lora", "mole", "soft-moa"]), base, torch.device("cpu"), Precision("fp32", "cpu"))
    assert {"lora", "mole", "soft-moa", "lora r=32 p=0.05"} <= {row.label for row in rows}
    for row in rows:
        assert {p.data_ptr() for p in row.model.parameters() if not p.requires_grad} == weights, row.label
