"""The expert-mixing core shared by every mixture method (MoLE, AdaMoLE, Soft/Sparse MoA).

N rank-r LoRA experts of one linear layer are stored stacked, A as (N·r, in) and B as (out, N·r),
and mixed with per-token routing weights applied at the rank stage:

    h = [dropoutᵢ(x) Aᵢᵀ]ᵢ       (T, N·r)    one GEMM for all experts (+ a sparse dropout correction)
    h = h ⊙ repeat(w, r)         (T, N·r)    w: (T, N) routing weights, 0 for unselected experts
    y = s · h Bᵀ                 (T, out)    one GEMM for all experts

This equals Σ_i w_i · s · B_i A_i dropoutᵢ(x) exactly (forward and backward: an unselected expert
has w_i = 0 and receives zero gradient, as if skipped), with no Python loop over experts.
Evaluation is two GEMMs and no host sync; training with dropout adds the correction over the ~p
dropped entries (expert_dropout.py), which on CUDA syncs to learn how many there are.
Methods differ only in how they compute w (see routing.py).
"""

import math
from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..base.errors import UserError
from .expert_dropout import dropout_correction

DropoutMode = Literal["per_expert", "shared"]


class LoraExperts(nn.Module):
    """N LoRA experts of one linear layer, mixed by caller-supplied per-token weights.

    Dropout, in training, is an independent mask per expert (dropout_mode="per_expert", as the
    AdaMoLE reference, where each expert owns an nn.Dropout) or one mask for all experts
    ("shared", a documented deviation). Both go through expert_dropout.dropped_projection: one
    GEMM for all experts plus a sparse correction over the dropped entries, drawn only for the
    (token, expert) pairs the router selected; autograd keeps x once, never N masked copies.
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
        self.dropout_p, self.dropout_mode = dropout, dropout_mode
        self.lora_A = nn.Parameter(torch.empty(num_experts * rank, in_features))
        self.lora_B = nn.Parameter(torch.zeros(out_features, num_experts * rank))
        # Per expert, nn.Linear's default init: kaiming_uniform(a=√5) = U(±1/√in); B = 0.
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))

    def project(self, x: torch.Tensor, router_weight: torch.Tensor | None = None, router_bias: torch.Tensor | None = None):
        """x Aᵀ (T, N·r) before dropout and, fused into the same GEMM (one pass over x, x saved once),
        a router's logits x W_rᵀ + b_r on the same un-dropped x. Returns (x Aᵀ, logits or None)."""
        dtype = _compute_dtype(x, self.lora_A)
        x = x.to(dtype)
        if router_weight is None:
            return x @ self.lora_A.to(dtype).t(), None
        weight = torch.cat([self.lora_A, router_weight]).to(dtype)
        bias = None if router_bias is None else torch.cat([router_bias.new_zeros(self.lora_A.shape[0]), router_bias]).to(dtype)
        projected, logits = F.linear(x, weight, bias).split([self.lora_A.shape[0], router_weight.shape[0]], dim=-1)
        return projected, logits

    def rank_activations(self, x: torch.Tensor, active: torch.Tensor | None = None, projected: torch.Tensor | None = None) -> torch.Tensor:
        """h = [dropoutᵢ(x) Aᵢᵀ]ᵢ, shape (..., N·r). active: (..., N) experts whose mask matters
        (default all); projected: x Aᵀ when the caller already has it (see `project`)."""
        if projected is None:
            projected, _ = self.project(x)
        if not (self.training and self.dropout_p > 0):
            return projected
        tokens = x.reshape(-1, x.shape[-1]).to(projected.dtype)
        if active is None:
            active = torch.ones(tokens.shape[0], self.num_experts, dtype=torch.bool, device=x.device)
        active = active.reshape(tokens.shape[0], -1) != 0
        if self.dropout_mode == "shared":
            active = active.any(dim=1, keepdim=True)
        kept = projected + dropout_correction(tokens, self.lora_A, active, self.dropout_p).view_as(projected)
        return kept * (1.0 / (1.0 - self.dropout_p))

    def forward(
        self, x: torch.Tensor, weights: torch.Tensor, active: torch.Tensor | None = None, projected: torch.Tensor | None = None
    ) -> torch.Tensor:
        """x: (..., in); weights: (..., N) → Σ_i weights_i · s · B_i A_i dropout_i(x), shape (..., out)."""
        h = self.rank_activations(x, active, projected)
        h = (h.unflatten(-1, (self.num_experts, self.rank)) * weights.unsqueeze(-1)).flatten(-2)
        h = h.to(_compute_dtype(h, self.lora_B))
        return self.scaling * (h @ self.lora_B.to(h.dtype).t())


def _compute_dtype(x: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    """The dtype a matmul with this weight runs in: autocast's (bf16/fp16) when it is on, else the weight's."""
    device = x.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else weight.dtype


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


def refuse_hf_save_pretrained(model: nn.Module) -> None:
    """Make `model.save_pretrained` fail loudly on a model adapted by the harness's own injection.

    HF would write the wrapped layers under names `from_pretrained` does not know, silently
    re-initialise q/k/v/o on load and drop the adapters; our save/load keep them.
    """
    if hasattr(model, "save_pretrained"):
        model.save_pretrained = _refused_save_pretrained


def _refused_save_pretrained(*_args, **_kwargs):
    raise UserError(
        "save_pretrained cannot store adamole-bench adapters (from_pretrained would drop them); use "
        "adamole_bench.save_adapter(model, DIR, method, base) and adamole_bench.load_adapter(DIR)"
    )
