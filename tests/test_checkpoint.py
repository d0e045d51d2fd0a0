"""Step checkpoints in one process: a real SIGUSR1/SIGTERM mid-training saves at the step's end and stops;
training again from that file ends bitwise where an uninterrupted run ends (dropout on, gradient
accumulation, a pass boundary crossed); damaged or foreign files are never loaded."""

import copy
import dataclasses
import os
import signal

import pytest
import torch

from adamole_bench.base.errors import UserError
from adamole_bench.harness.model.loading import load_base_model
from adamole_bench.harness.settings.config import TrainConfig, config_hash, trial_config
from adamole_bench.harness.settings.load import load_config
from adamole_bench.harness.store.liveness import Terminated, sigterm_as_interrupt
from adamole_bench.harness.train.checkpoint import Checkpoint
from adamole_bench.harness.train.data import EncodedExamples
from adamole_bench.harness.train.loop import set_seed, train
from adamole_bench.methods.registry import build_method
from adamole_bench.tasks.sources import load_task

STEPS = 7  # 14 micro-batches of 4 over 32 examples: the second pass over the data starts at step 5


@pytest.fixture(scope="module")
def tiny():
    return load_base_model("tiny-llama")


@pytest.fixture(scope="module")
def examples(tiny):
    task = load_task("fruit_or_color")
    return EncodedExamples([(task.spec, task.splits["train"][:32])], tiny.tokenizer, 64, "answer", "letter")


def _config(tmp_path, order: str, every: int = 100) -> TrainConfig:
    grouping = {"ours": {}, "hf": {"length_grouping": "hf"}, "shuffle": {"group_by_length": False}}[order]
    return TrainConfig(
        max_steps=STEPS, batch_size=4, grad_accum=2, warmup_steps=2, lr=1e-2, lr_schedule="linear", checkpoint_every=every,
        checkpoint_dir=str(tmp_path), **grouping,
    )  # fmt: skip


def _train(tiny, examples, method_name, config, checkpoint=None, on_step=None):
    """A fresh adapter (same seed, same initial weights) on a copy of the base, trained."""
    method = build_method(method_name, {"dropout": 0.1})
    set_seed(0)
    model = method.apply(copy.deepcopy(tiny.model))
    result = train(model, method, examples, config, 0, tiny.tokenizer.pad_token_id, checkpoint=checkpoint, on_step=on_step)
    return result, {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}


@pytest.mark.integration  # three short trainings each: ~10 s on 2 shared cores
@pytest.mark.parametrize(("method_name", "order", "stop_at", "signum"), [
    ("lora", "ours", 3, signal.SIGUSR1),
    ("lora", "hf", 4, signal.SIGTERM),  # the checkpoint falls exactly at the end of a pass
    ("adamole", "shuffle", 5, signal.SIGUSR1),
])  # fmt: skip
def test_a_signal_saves_at_the_step_end_and_the_resumed_run_equals_an_uninterrupted_one_bitwise(
    tmp_path, tiny, examples, method_name, order, stop_at, signum
):
    config = _config(tmp_path, order)
    reference, reference_params = _train(tiny, examples, method_name, config)

    checkpoint = Checkpoint.for_trial("0123456789ab", 0, config)
    send = lambda step, _: os.kill(os.getpid(), signum) if step == stop_at else None  # noqa: E731 - a real signal, mid-run
    with sigterm_as_interrupt(), pytest.raises(Terminated) as stopped:
        _train(tiny, examples, method_name, config, checkpoint, on_step=send)
    assert stopped.value.exit_code == 128 + signum
    saved = checkpoint.load()
    assert saved["step"] == stop_at and saved["reason"] == f"on {signal.Signals(signum).name}"

    resumed, resumed_params = _train(tiny, examples, method_name, config, checkpoint)
    assert resumed.resumed_from == stop_at
    assert resumed.losses == reference.losses and resumed.aux_losses == reference.aux_losses
    assert resumed.tokens == reference.tokens and resumed.steps == STEPS
    assert resumed_params.keys() == reference_params.keys()
    assert all(torch.equal(resumed_params[name], reference_params[name]) for name in reference_params)


def test_without_checkpoints_a_signal_stops_at_once(tmp_path, tiny, examples):
    send = lambda step, _: os.kill(os.getpid(), signal.SIGTERM) if step == 2 else None  # noqa: E731
    with sigterm_as_interrupt(), pytest.raises(Terminated) as stopped:
        _train(tiny, examples, "lora", _config(tmp_path, "ours"), None, on_step=send)
    assert stopped.value.exit_code == 143 and not list(tmp_path.iterdir())


@pytest.fixture(scope="module")
def saved_bytes(tmp_path_factory, tiny, examples) -> bytes:
    """A real checkpoint file, taken at the last step of a 7-step run."""
    config = _config(tmp_path_factory.mktemp("saved"), "ours")
    checkpoint = Checkpoint.for_trial("0123456789ab", 0, config)
    _train(tiny, examples, "lora", config, checkpoint)
    assert checkpoint.load()["step"] == STEPS
    return checkpoint.path.read_bytes()


@pytest.fixture
def saved(tmp_path, saved_bytes) -> Checkpoint:
    checkpoint = Checkpoint.for_trial("0123456789ab", 0, TrainConfig(checkpoint_dir=str(tmp_path)))
    checkpoint.path.write_bytes(saved_bytes)
    return checkpoint


@pytest.mark.parametrize("damage", ["truncate", "flip", "empty"])
def test_a_damaged_checkpoint_is_ignored_in_one_line_never_loaded(saved, damage, capsys):
    data = saved.path.read_bytes()
    damaged = {"truncate": data[: len(data) // 2], "flip": data[:100] + bytes([data[100] ^ 1]) + data[101:], "empty": b""}[damage]
    saved.path.write_bytes(damaged)
    assert saved.load() is None
    said = capsys.readouterr().out.strip()
    assert "damaged" in said and "ignored, training from step 0" in said and "\n" not in said


def test_a_checkpoint_of_other_settings_or_code_is_never_found_and_a_renamed_one_is_refused(saved, capsys):
    other = Checkpoint(saved.path.with_name("ba9876543210-seed0.ckpt"), "ba9876543210", saved.every)
    assert other.load() is None and capsys.readouterr().out == ""  # another identity: another file, none there
    assert Checkpoint.for_trial(saved.identity, 1, TrainConfig(checkpoint_dir=str(saved.path.parent))).load() is None  # another seed
    other.path.write_bytes(saved.path.read_bytes())
    assert other.load() is None
    assert "from another trial" in capsys.readouterr().out


def test_checkpoint_settings_never_change_the_config_hash_and_are_validated(tmp_path):
    plain = config_hash(trial_config(load_config(), "lora", "copa"))
    moved = load_config(overrides=["train.checkpoint_every=5", f"train.checkpoint_dir={tmp_path}", "train.keep_checkpoints=true"])
    assert config_hash(trial_config(moved, "lora", "copa")) == plain
    with pytest.raises(UserError, match=r"train\.checkpoint_every must be >= 0"):
        load_config(overrides=["train.checkpoint_every=-1"])
    with pytest.raises(UserError, match=r"train\.checkpoint_dir is empty"):  # e.g. `checkpoint_dir: ""` in a YAML file
        TrainConfig(checkpoint_dir=" ").validate()


def test_each_trial_of_a_plan_has_its_own_checkpoint_and_other_settings_or_code_another(tmp_path):
    from adamole_bench.harness.run.sweep import plan

    def paths(*overrides, implementation=None):
        config = load_config(model="tiny-llama", methods=["lora"], tasks=["fruit_or_color"], seeds=[0, 1], overrides=[*overrides, "reference=false"])
        trials = plan(config)
        if implementation:  # the same settings computed by other code (harness/store/fingerprint.py)
            trials = [dataclasses.replace(t, implementation={**t.implementation, "implementation": implementation}) for t in trials]
        return [Checkpoint.for_trial(t.identity, t.seed, TrainConfig(checkpoint_dir=str(tmp_path))).path for t in trials]

    here = paths()
    assert len(set(here)) == 2  # one per seed
    assert paths("train.checkpoint_every=7") == here  # when checkpoints are taken is no part of the trial
    assert not set(paths("train.lr=1e-3")) & set(here)
    assert not set(paths(implementation="0ther0code000")) & set(here)
