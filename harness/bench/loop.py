"""The loop-over-experts reference the bench times the vectorized core against.

`loop_over_experts` computes LoraExperts.forward the way the reference implementations do, one
pass per expert; `loop_reference` swaps it in for a block; `loop_max_abs_difference` checks both
paths give the same logits before any time is compared.
"""

from contextlib import contextmanager

import torch
from torch import nn

from ...methods.experts import LoraExperts
from ..model.one_base import sharing_weights
from ..model.precision import Precision

LOOP_EQUALITY_TOLERANCE = 1e-4  # max |logit difference| on a float64 copy: 4e-6-8e-6 measured (HF's RMSNorm computes in fp32)


def loop_over_experts(
    experts: LoraExperts, x: torch.Tensor, weights: torch.Tensor, active: torch.Tensor | None = None, projected: torch.Tensor | None = None
) -> torch.Tensor:
    """LoraExperts.forward computed as the reference does: one gather/GEMM/scatter pass per expert,
    each expert with its own dropout on the rows it selected (`active`/`projected` are not used:
    the loop recomputes everything from x)."""
    x = x.to(experts.lora_A.dtype)
    rows_x = x.reshape(-1, x.shape[-1])
    rows_w = weights.reshape(-1, experts.num_experts).to(x.dtype)
    a = experts.lora_A.view(experts.num_experts, experts.rank, -1)
    b = experts.lora_B.view(experts.lora_B.shape[0], experts.num_experts, experts.rank)
    out = rows_x.new_zeros(rows_x.shape[0], b.shape[0])
    for i in range(experts.num_experts):
        selected = torch.where(rows_w[:, i] != 0)[0]  # nonzero: a device→host sync per expert
        if len(selected) == 0:
            continue
        h = torch.nn.functional.dropout(rows_x[selected], experts.dropout_p, experts.training) @ a[i].t()
        y = (h @ b[:, i].t()) * (experts.scaling * rows_w[selected, i, None])
        out = out.index_add(0, selected, y.to(out.dtype))
    return out.view(*x.shape[:-1], -1)


@contextmanager
def loop_reference(model: nn.Module):
    """Run every LoraExperts of `model` through `loop_over_experts` inside the block.

    Patched on the class, not the instances: methods reach the core through subclasses too (MoA's
    GatedLora calls `super().forward(x, gate)`), and all of them must take the loop path.
    """
    if not any(isinstance(m, LoraExperts) for m in model.modules()):
        raise ValueError(f"{type(model).__name__} has no LoraExperts to run as a loop")
    vectorized = LoraExperts.forward
    LoraExperts.forward = loop_over_experts  # type: ignore[method-assign,assignment]  # the patch is the point: every subclass takes the loop
    try:
        yield
    finally:
        LoraExperts.forward = vectorized  # type: ignore[method-assign]


def expert_modules(model: nn.Module) -> list[LoraExperts]:
    return [m for m in model.modules() if isinstance(m, LoraExperts)]


def loop_max_abs_difference(model: nn.Module, precision: Precision, batch: dict) -> float:
    """Max |logit difference| between the vectorized forward and the loop reference, in eval mode on a
    float64 copy of the model: what is checked is the arithmetic. On an fp32 copy the two paths
    differ by ~3e-4 (summation order), enough to flip a top-k choice whose two gate scores tie that
    closely in a later layer, one decision among ~120k at 8 × 128: one bf16 MoLE bench run showed a
    0.2 difference that reruns of the same row did not. float64 shrinks the differences ~100×
    (transformers' RMSNorm still computes in fp32), and the odds of a flip with them."""
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    model.eval()
    with torch.no_grad(), precision.autocast():
        model(**inputs)  # an eval forward drops the last step's aux loss, a graph tensor deepcopy refuses
    model.train()
    copied = _float64_copy(model).eval()
    with torch.no_grad():
        vectorized = copied(**inputs).logits
        with loop_reference(copied):
            looped = copied(**inputs).logits
    return float((vectorized - looped).abs().max())


def _float64_copy(model: nn.Module) -> nn.Module:
    """`model` in float64, built without a float32 copy of its weights first: the modules over the same
    tensors (one_base.sharing_weights), whose conversion puts new float64 tensors in the copy's modules
    instead of converting the shared ones in place."""
    previous = torch.__future__.get_overwrite_module_params_on_conversion()
    torch.__future__.set_overwrite_module_params_on_conversion(True)
    try:
        return sharing_weights(model).double()
    finally:
        torch.__future__.set_overwrite_module_params_on_conversion(previous)
