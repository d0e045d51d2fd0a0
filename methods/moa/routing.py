"""MoA's per-block router and Sparse MoA's threshold (spec §1 router, §3)."""

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn


class SwiGLURouter(nn.Module):
    """w2(SiLU(w1 x) ⊙ w3 x) with zeroed biases, the reference's `swi_x > 0` router."""

    def __init__(self, hidden_size: int, inner_size: int, num_experts: int):
        super().__init__()
        self.w1 = nn.Linear(hidden_size, inner_size)
        self.w3 = nn.Linear(hidden_size, inner_size)
        self.w2 = nn.Linear(inner_size, num_experts)
        for linear in (self.w1, self.w2, self.w3):
            nn.init.zeros_(linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


def make_router(kind: Literal["linear", "swiglu"], hidden_size: int, num_experts: int, swiglu_factor: int) -> nn.Module:
    """Router logits (…, E); the gate is their independent sigmoids (no softmax)."""
    if kind == "swiglu":
        return SwiGLURouter(hidden_size, num_experts * swiglu_factor, num_experts)
    return nn.Linear(hidden_size, num_experts)  # default init, bias kept (reference swi_x=0)


class ExpertThreshold(nn.Module):
    """Sparse MoA's gate: expert e runs on a token iff w_e ≥ t, t = max_threshold·σ(Linear(d,1) x).

    faithful: g = w·1[w ≥ t]. The comparison has no gradient and g does not contain t, so the
    threshold layer never trains (its grad stays None): the reference's bug, kept by default.
    adaptive: g = (w − t)·1[w ≥ t], so t receives gradient (AdaMoLE-style, no renormalisation).
    """

    def __init__(self, hidden_size: int, max_threshold: float, const: bool, weights: Literal["faithful", "adaptive"]):
        super().__init__()
        self.max_threshold, self.weights = max_threshold, weights
        self.proj = None if const else nn.Linear(hidden_size, 1)

    def threshold(self, x: torch.Tensor) -> torch.Tensor:
        if self.proj is None:
            return x.new_full((*x.shape[:-1], 1), self.max_threshold)
        return self.max_threshold * torch.sigmoid(self.proj(x))

    def forward(self, x: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """→ (mixing weights with inactive experts at exactly 0, threshold (…, 1))."""
        threshold = self.threshold(x)
        active = weights >= threshold
        kept = weights - threshold if self.weights == "adaptive" else weights
        return kept * active, threshold
