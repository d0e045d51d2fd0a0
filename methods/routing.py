"""Routing rules of MoLE and AdaMoLE as pure tensor functions (AdaMoLE reference §3–5).

Each rule maps gate logits (T, N) to a `Routing`: per-token expert weights (T, N), zero for
unselected experts, plus what the load-balancing loss and the statistics need. All rules are
vectorised and sync-free: no `.item()`, no `nonzero`, no loop over experts, so they run the
same on CPU and GPU and never stall the device.
"""

from dataclasses import dataclass

import torch


@dataclass
class Routing:
    weights: torch.Tensor  # (T, N) mixing weights, rows sum to 1 (or 0 when nothing is selected)
    selected: torch.Tensor  # (T, N) float 0/1 selection mask
    balance_scores: torch.Tensor  # (T, N) q whose mean is P in the aux loss (p, or p − τ for AdaMoLE)
    threshold: torch.Tensor | None = None  # (T, 1) AdaMoLE's per-token τ


def full_precision(logits: torch.Tensor) -> torch.Tensor:
    """Router logits for the routing rules: fp32 (or fp64) even when the gate GEMM ran under bf16/fp16 autocast."""
    return logits if logits.dtype in (torch.float32, torch.float64) else logits.float()


def renormalise(scores: torch.Tensor) -> torch.Tensor:
    """scores / row sum, with a zero sum divided by 1 instead, so tokens that select nothing get w = 0."""
    total = scores.sum(dim=-1, keepdim=True)
    return scores / torch.where(total == 0, torch.ones_like(total), total)


def top_k(gate_logits: torch.Tensor, k: int) -> Routing:
    """MoLE top-k: softmax over all experts, keep the k largest, renormalise over them."""
    probs = gate_logits.softmax(dim=-1)
    chosen = probs.topk(k, dim=-1).indices
    selected = torch.nn.functional.one_hot(chosen, probs.shape[-1]).sum(dim=-2).to(probs.dtype)
    return Routing(renormalise(probs * selected), selected, probs)


def fixed_threshold(gate_logits: torch.Tensor, threshold: float) -> Routing:
    """MoLE threshold variant: experts with p_i ≥ t, weights p_i renormalised over them."""
    probs = gate_logits.softmax(dim=-1)
    selected = (probs >= threshold).to(probs.dtype)
    return Routing(renormalise(probs * selected), selected, probs)


def adaptive_threshold(gate_logits: torch.Tensor, threshold_logits: torch.Tensor, max_threshold: float) -> Routing:
    """AdaMoLE: τ = max_threshold·σ(W_t x + b); experts with p_i ≥ τ, weights ∝ (p_i − τ).

    The mask is a constant for autograd (no straight-through), so a token with exactly one
    selected expert has weight 1 and sends the gate and threshold no task-loss gradient.
    """
    probs = gate_logits.softmax(dim=-1)
    tau = torch.sigmoid(threshold_logits) * max_threshold
    gaps = probs - tau
    selected = (gaps >= 0).to(probs.dtype)
    return Routing(renormalise(gaps * selected), selected, gaps, tau)


def load_balancing_loss(routing: Routing) -> torch.Tensor:
    """Switch-style N·Σ_i f_i·P_i over all T routed tokens (f: selection share, no gradient; P: mean q)."""
    fraction = routing.selected.mean(dim=0)
    mean_score = routing.balance_scores.mean(dim=0)
    return routing.selected.shape[-1] * (fraction * mean_score).sum()
