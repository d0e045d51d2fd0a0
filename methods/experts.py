"""The expert-mixing core shared by every mixture method (MoLE, AdaMoLE, Soft/Sparse MoA).

N rank-r LoRA experts of one linear layer are stored stacked, A as (N·r, in) and B as (out, N·r),
and mixed with per-token routing weights applied at the rank stage:

    h = dropout(x) Aᵀ            (T, N·r)    one GEMM for all experts
    h = h ⊙ repeat(w, r)         (T, N·r)    w: (T, N) routing weights, 0 for unselected experts
    y = s · h Bᵀ                 (T, out)    one GEMM for all experts

This equals Σ_i w_i · s · B_i A_i x exactly (forward and backward: an unselected expert has w_i = 0
and receives zero gradient, as if skipped), with no Python loop over experts, no gather/scatter
and no host sync. Methods differ only in how they compute w (see routing.py).
"""

import math
from collections.abc import Callable
from typing import Literal

import torch
from torch import nn

from .registry import refuse_hf_save_pretrained

DropoutMode = Literal["per_expert", "shared"]


class LoraExperts(nn.Module):
    """N LoRA experts of one linear layer, mixed by caller-supplied per-token weights.

    dropout_mode="per_expert" draws an independent dropout mask per expert, exactly as the
    AdaMoLE reference (each expert owns an nn.Dropout); it materialises N masked copies of x.
    dropout_mode="shared" draws one mask for all experts (one GEMM, no copies): a documented
    deviation in training, identical in evaluation (dropout is off).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        num_experts: int,
        rank: int,
        scaling: float,
        dropout: float = 0.0,
        dropout_mode: DropoutMode = "per_expert",
    ):
        super().__init__()
        self.num_experts, self.rank, self.scaling = num_experts, rank, scaling
        self.dropout_mode = dropout_mode
        self.lora_A = nn.Parameter(torch.empty(num_experts * rank, in_features))
        self.lora_B = nn.Parameter(torch.zeros(out_features, num_experts * rank))
        # Per expert, nn.Linear's default init: kaiming_uniform(a=√5) = U(±1/√in); B = 0.
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def rank_activations(self, x: torch.Tensor) -> torch.Tensor:
        """h = dropout(x) Aᵀ, shape (..., N·r)."""
        if self.training and self.dropout_mode == "per_expert" and isinstance(self.dropout, nn.Dropout) and self.num_experts > 1:
            copies = self.dropout(x.unsqueeze(-2).expand(*x.shape[:-1], self.num_experts, x.shape[-1]))
            a = self.lora_A.view(self.num_experts, self.rank, -1)
            return torch.einsum("...ni,nri->...nr", copies, a).flatten(-2)
        return self.dropout(x) @ self.lora_A.t()

    def forward(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """x: (..., in); weights: (..., N) → Σ_i weights_i · s · B_i A_i x, shape (..., out)."""
        x = x.to(self.lora_A.dtype)
        h = self.rank_activations(x)
        h = (h.unflatten(-1, (self.num_experts, self.rank)) * weights.to(h.dtype).unsqueeze(-1)).flatten(-2)
        return self.scaling * (h @ self.lora_B.t())


class AdaptedLinear(nn.Module):
    """A frozen linear layer plus an adapter branch: y = base(x) + adapter(x), in the base dtype."""

    def __init__(self, base_layer: nn.Linear, adapter: nn.Module):
        super().__init__()
        self.base_layer = base_layer
        self.adapter = adapter

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base_layer(x) + self.adapter(x).to(x.dtype)


def inject(model: nn.Module, target_modules: list[str], make_adapter: Callable[[str, nn.Linear], nn.Module]) -> list[str]:
    """Wrap every nn.Linear whose name ends in a target (as PEFT matches) with AdaptedLinear.

    The base model is frozen; only the adapters' parameters train, and its HF `save_pretrained`
    now refuses (it would drop the adapters). Returns the wrapped names.
    """
    model.requires_grad_(False)
    targets = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and any(name == t or name.endswith("." + t) for t in target_modules)
    ]
    if not targets:
        raise ValueError(f"no nn.Linear named {target_modules} in {type(model).__name__}")
    for name, linear in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        adapter = make_adapter(name, linear).to(linear.weight.device)
        setattr(parent, child, AdaptedLinear(linear, adapter))
    refuse_hf_save_pretrained(model)
    return [name for name, _ in targets]
