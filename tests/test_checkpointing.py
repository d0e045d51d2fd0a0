"""train.gradient_checkpointing: the same loss, gradients and statistics as the plain path, every method."""

import copy

import pytest
import torch

from adamole_bench.harness.model.loading import load_base_model, tiny_llama
from adamole_bench.harness.settings.config import TrainConfig
from adamole_bench.harness.train.checkpointing import gradient_checkpointing
from adamole_bench.harness.train.data import EncodedExamples
from adamole_bench.harness.train.loop import set_seed, supervised_loss, train
from adamole_bench.methods.registry import build_method
from adamole_bench.tasks.sources import load_task

METHODS = ["lora", "mole", "adamole", "soft-moa", "sparse-moa"]


def _model(method_name: str):
    """The tiny model in float64 with its adapter, dropout on everywhere: the adapters' own (LoRA and the
    mixtures) and attention dropout, so the MoA methods draw random masks too."""
    torch.manual_seed(0)
    method = build_method(method_name, {})
    model = method.apply(tiny_llama().double()).train()
    for module in model.modules():
        if hasattr(module, "attention_dropout"):
            module.attention_dropout = 0.1  # type: ignore[assignment]  # torch types Module.__setattr__ values as Tensor | Module; any value works
    return method, model


def _batch():
    lengths, width = [12, 9, 7], 12
    ids = torch.randint(3, 200, (3, width), generator=torch.Generator().manual_seed(2))
    mask = torch.tensor([[1] * n + [0] * (width - n) for n in lengths])
    labels = torch.full_like(ids, -100)
    for row, n in enumerate(lengths):
        labels[row, n - 2 - row : n] = ids[row, n - 2 - row : n]
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _attention_calls(model) -> list[int]:
    """How often the first attention block ran: twice a step when checkpointing replays it in backward."""
    calls = [0]
    attention = next(m for name, m in model.named_modules() if name.endswith("layers.0.self_attn"))
    attention.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


@pytest.mark.parametrize("method_name", METHODS)
def test_checkpointed_loss_and_gradients_equal_the_plain_path_in_float64(method_name):
    method, model = _model(method_name)
    batch, params = _batch(), [p for p in model.parameters() if p.requires_grad]
    classes = [type(m) for m in model.modules()]
    calls = _attention_calls(model)

    def value_and_grads():
        set_seed(1)  # the same dropout masks for both
        calls[0] = 0
        loss = supervised_loss(model, batch)
        aux = method.aux_loss(model)
        total = loss if aux is None else loss + 0.01 * aux
        return loss, aux, torch.autograd.grad(total, params, allow_unused=True), calls[0]

    plain = value_and_grads()
    with gradient_checkpointing(model, True):
        checkpointed = value_and_grads()
    assert (plain[3], checkpointed[3]) == (1, 2)  # the replay really ran
    assert checkpointed[0].dtype == torch.float64 and torch.allclose(checkpointed[0], plain[0], rtol=1e-12, atol=0)
    assert (plain[1] is None) == (method_name in ("lora", "soft-moa", "sparse-moa"))
    if plain[1] is not None:  # the aux loss of the first forward, not of the replay, and counted once
        assert torch.allclose(checkpointed[1], plain[1], rtol=1e-12, atol=0)
    for got, expected in zip(checkpointed[2], plain[2]):
        assert (got is None) == (expected is None)
        if got is not None:
            assert torch.allclose(got, expected, rtol=1e-10, atol=1e-14)
    assert sum(g.abs().sum() for g in plain[2] if g is not None) > 0
    assert [type(m) for m in model.modules()] == classes  # the model is left as it was
    assert value_and_grads()[3] == 1
    set_seed(1)
    with gradient_checkpointing(model, True):
        loss = supervised_loss(model, batch)
    late = torch.autograd.grad(loss, params, allow_unused=True)  # a backward after the block still replays
    set_seed(1)
    plain_task = torch.autograd.grad(supervised_loss(model, batch), params, allow_unused=True)
    assert all(g is None or torch.allclose(g, e, rtol=1e-10, atol=1e-14) for g, e in zip(late, plain_task))


@pytest.mark.parametrize("method_name", ["adamole", "sparse-moa"])
def test_expert_statistics_count_each_token_once_under_checkpointing(method_name):
    """A statistics recorder left on during a training step sees the replay's tokens only once."""
    method, model = _model(method_name)
    batch = _batch()

    def recorded(checkpointing: bool) -> dict:
        set_seed(1)
        with gradient_checkpointing(model, checkpointing), method.statistics(model) as stats:
            loss = supervised_loss(model, batch)
            loss.backward()
        model.zero_grad(set_to_none=True)
        return stats.metrics()

    plain, checkpointed = recorded(False), recorded(True)
    assert plain and checkpointed.keys() == plain.keys()
    for key, value in plain.items():
        assert checkpointed[key] == pytest.approx(value, rel=1e-12, abs=1e-12), key


@pytest.mark.integration
def test_training_with_checkpointing_gives_bitwise_the_same_losses_in_fp32():
    """Why the setting is left out of the config hash: in fp32 on CPU the replay computes the same numbers."""
    tiny, task = load_base_model("tiny-llama"), load_task("fruit_or_color")
    examples = EncodedExamples([(task.spec, task.splits["train"][:32])], tiny.tokenizer, 64, "answer", "letter")
    losses = {}
    for checkpointing in (False, True):
        set_seed(0)  # the same adapter initialisation
        method = build_method("adamole", {})
        model = method.apply(copy.deepcopy(tiny.model))
        config = TrainConfig(max_steps=3, batch_size=8, warmup_steps=0, lr=1e-2, gradient_checkpointing=checkpointing)
        losses[checkpointing] = train(model, method, examples, config, 0, tiny.tokenizer.pad_token_id)
    assert losses[True].losses == losses[False].losses and losses[True].aux_losses == losses[False].aux_losses
    assert len(set(losses[True].losses)) == 3  # it trained
