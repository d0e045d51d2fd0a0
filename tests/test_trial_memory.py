"""Each trial logs its own peak memory (harness/train/loop.py PeakMemory), not the process's lifetime peak."""

import pytest
import torch
from rich.console import Console

from adamole_bench.harness.run import sweep, trial_state
from adamole_bench.harness.settings.load import load_config
from adamole_bench.harness.store.tracking import Tracker

pytestmark = pytest.mark.integration  # real sweeps, memory sampled while they train


def test_a_small_trial_after_a_large_one_reports_its_own_smaller_peak(monkeypatch, tmp_path):
    """LoRA trains one step on 32 BoolQ passages of 512 byte tokens, then `base` scores 2 docs, in one sweep.

    The expectation comes from the sizes the big step really allocated: the bytes autograd saved for its
    backward (its activations, the weights left out), all alive at once when the forward ends. With the
    process's lifetime peak (ru_maxrss) the second trial would report at least the first one's peak."""
    saved: list[int] = []
    real_train = trial_state.train

    def counting_train(model, method, examples, *args, **kwargs):
        weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
        seen: set[int] = set()

        def pack(tensor):
            storage = tensor.untyped_storage()
            if storage.data_ptr() not in seen | weights:
                seen.add(storage.data_ptr())
                saved.append(storage.nbytes())
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            return real_train(model, method, examples, *args, **kwargs)

    monkeypatch.setattr(trial_state, "train", counting_train)
    config = load_config(
        None,
        ["train.batch_size=32", "train.max_length=512", "train.max_train_examples=32", "eval.batch_size=1", "save_adapters=false", "eval.expert_stats=false",
         "train.gradient_checkpointing=false"],  # the big trial must keep its activations for the peaks to differ
        model="tiny-llama", methods=["lora", "base"], tasks=["boolq"], seeds=[0], train__max_steps=1, eval__limit=2,
    )  # fmt: skip
    outcomes = sweep.run_sweep(config, Console(quiet=True), Tracker("memory-test", uri=f"sqlite:///{tmp_path / 'mlflow.db'}"))
    big, small = ({k: v for k, v in o.metrics.items() if k.startswith("memory/")} for o in outcomes)
    activations_mb = sum(saved) / 2**20
    print(f"saved activations {activations_mb:.0f} MB; large trial {big}; small trial {small}")
    assert [(o.trial.method, o.status) for o in outcomes] == [("lora", "finished"), ("base", "finished")]
    assert big["memory/peak_delta_mb"] >= activations_mb  # its activations are in its own peak
    assert small["memory/peak_delta_mb"] < activations_mb  # scoring 2 docs without gradients keeps none
    assert small["memory/peak_mb"] < big["memory/peak_mb"]
