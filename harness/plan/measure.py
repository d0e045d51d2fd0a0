"""What `plan` is checked against: the peak of live tensor memory over real training steps.

CUDA: the allocator's peak after a reset. CPU: the profiler's allocation events (every tensor
allocation and free, in order), summed into a running total; the resident set size would add the
interpreter, libraries and the allocator's cache, which `plan` does not estimate.
"""

import copy

import torch

from ...methods.registry import build_method
from ..model.loading import load_base_model, resolve_device
from ..model.precision import Precision
from ..settings.config import TrainConfig
from ..train.checkpointing import gradient_checkpointing
from ..train.loop import supervised_loss
from .memory import plan


def training_peak(model: torch.nn.Module, method, train: TrainConfig, precision: Precision, steps: int = 2) -> int:
    """Bytes of tensors alive at the peak of `steps` AdamW steps on random full-length batches, above
    what was alive before (the weights and the adapter): gradients, optimizer state and activations."""
    params = [p for p in model.parameters() if p.requires_grad]
    device = params[0].device
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    ids = torch.randint(3, model.config.vocab_size, (train.batch_size, train.max_length), device=device)  # type: ignore[union-attr,arg-type]  # torch types Module.__getattr__ as Tensor | Module; config is a plain attribute
    labels = ids.clone()
    if train.loss_on == "answer":  # two answer tokens a row, at different positions (as right-padded rows have)
        labels.fill_(-100)
        for row in range(train.batch_size):
            end = train.max_length - row % 4
            labels[row, end - 2 : end] = ids[row, end - 2 : end]
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    model.train()

    def step() -> None:
        with gradient_checkpointing(model, train.gradient_checkpointing):  # backward inside, as in the training loop
            with precision.autocast():
                loss = supervised_loss(model, batch)
                aux = method.aux_loss(model)
                total = loss if aux is None else loss + method.aux_loss_coeff * aux.float()
            total.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    if device.type == "cuda":
        torch.cuda.synchronize(device)
        start = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        for _ in range(steps):
            step()
        return torch.cuda.max_memory_allocated(device) - start
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as profile:
        for _ in range(steps):
            step()
    # An op's own allocations (less its own frees) at its start; frees after it as "[memory]" events.
    events = sorted((e.time_range.start, e.cpu_memory_usage if e.name == "[memory]" else e.self_cpu_memory_usage) for e in profile.events())
    live = peak = 0
    for _, change in events:
        live += change
        peak = max(peak, live)
    return peak


def plan_against_measured(config) -> list[dict]:
    """Every method of `config`: the plan's estimate beside the measured peak, both above what is alive before
    training starts (the loaded weights and the attached adapter)."""
    precision = config.resolved_precision()
    base = precision.prepare(load_base_model(config.model, device=str(resolve_device(config.device))).model)
    rows = []
    for estimate in plan(config):
        torch.manual_seed(0)
        method = build_method(estimate.method, config.method_options.get(estimate.method))
        model = method.apply(copy.deepcopy(base))
        measured = training_peak(model, method, config.train, precision)
        predicted = estimate.total(config.train.gradient_checkpointing) - estimate.weights - estimate.adapter  # both alive before the steps
        rows.append({"method": estimate.method, "predicted_bytes": predicted, "measured_bytes": measured, "ratio": predicted / measured})
        del model
    return rows
