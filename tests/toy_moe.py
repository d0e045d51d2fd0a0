"""A small top-k mixture-of-LoRA-experts method built on the shared core, for tests only.

It stands in for MoLE/AdaMoLE until they are merged: a softmax router picks the top-k of N
experts per token (sparse routing weights, zeros elsewhere) and reports a load-balancing
auxiliary loss, so the bench and the DDP tests exercise the same paths the real methods use.
"""

from dataclasses import dataclass, field

import torch
from torch import nn

from adamole_bench.methods.experts import LoraExperts, inject
from adamole_bench.methods.registry import Method, register


@dataclass
class ToyMoeConfig:
    num_experts: int = 4
    rank: int = 4
    top_k: int = 2
    alpha: float = 8.0
    dropout: float = 0.0
    aux_loss_coeff: float = 0.01
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])


class TopKMixture(nn.Module):
    def __init__(self, linear: nn.Linear, config: ToyMoeConfig):
        super().__init__()
        self.top_k = config.top_k
        self.router = nn.Linear(linear.in_features, config.num_experts, bias=False)
        self.experts = LoraExperts(
            linear.in_features, linear.out_features, config.num_experts, config.rank, config.alpha / config.rank, config.dropout
        )
        self.last_aux_loss: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probs = self.router(x.to(self.router.weight.dtype)).softmax(-1)
        top, index = probs.topk(self.top_k, dim=-1)
        weights = torch.zeros_like(probs).scatter(-1, index, top / top.sum(-1, keepdim=True))
        load = nn.functional.one_hot(index, probs.shape[-1]).sum(-2).float().flatten(0, -2).mean(0)
        self.last_aux_loss = probs.shape[-1] * (load * probs.flatten(0, -2).mean(0)).sum()
        return self.experts(x, weights)


@register
class ToyMoe(Method):
    name = "toy-moe"
    config_class = ToyMoeConfig
    description = "test-only top-k mixture of LoRA experts with a load-balancing loss"

    def apply(self, model: nn.Module) -> nn.Module:
        inject(model, self.config.target_modules, lambda _name, linear: TopKMixture(linear, self.config))
        return model

    def aux_loss(self, model: nn.Module) -> torch.Tensor | None:
        losses = [m.last_aux_loss for m in model.modules() if isinstance(m, TopKMixture) and m.last_aux_loss is not None]
        return torch.stack(losses).mean() if losses else None
