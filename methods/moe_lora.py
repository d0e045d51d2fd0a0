"""The mixture-of-LoRA-experts adapter shared by MoLE and AdaMoLE; they differ only in the router.

Per adapted linear: a router (gate on the un-dropped x, plus AdaMoLE's threshold network) turns
each token into expert weights (routing.py), and `LoraExperts` mixes the N experts with them in
two GEMMs. The load-balancing loss of the last *training* forward is kept on each adapter and
summed by walking `model.modules()`, so it survives DDP/DataParallel wrapping and is never
reported stale in evaluation (reference bugs §10.3 and §10.6).
"""

import re
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from . import routing
from .expert_stats import ExpertStatistics
from .experts import DropoutMode, LoraExperts
from .lora.config import LLAMA_ATTENTION
from .method import Method, StatisticsRecorder
from .recompute import replaying


@dataclass
class MoeLoraConfig:
    """Shared hyperparameters; defaults are the reference's CSQA recipe (train.py + csr config).

    `rank` is the total rank, split evenly over the experts (32 / 8 = 4 each), while `alpha` stays
    16, so each expert is scaled by alpha / (rank / num_experts) = 4.0, eight times LoRA-32's 0.5.
    That is the reference's behaviour and the faithful default; set alpha to choose another scale.
    """

    num_experts: int = 8
    rank: int = 32
    alpha: float = 16.0
    dropout: float = 0.05
    dropout_mode: DropoutMode = "per_expert"
    target_modules: list[str] = field(default_factory=lambda: list(LLAMA_ATTENTION))
    aux_loss_coeff: float = 1e-3

    @property
    def expert_rank(self) -> int:
        return self.rank // self.num_experts

    @property
    def scaling(self) -> float:
        return self.alpha / self.expert_rank

    def validate(self) -> None:
        if self.num_experts < 1:
            raise ValueError(f"num_experts must be >= 1, got {self.num_experts}")
        if self.rank < self.num_experts or self.rank % self.num_experts:
            raise ValueError(
                f"rank is the total rank split over the experts: it must be a multiple of num_experts ({self.num_experts}), got {self.rank}"
            )
        if self.alpha <= 0:
            raise ValueError(f"alpha must be > 0, got {self.alpha}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.dropout_mode not in ("per_expert", "shared"):
            raise ValueError(f"dropout_mode must be per_expert or shared, got {self.dropout_mode!r}")
        if not self.target_modules:
            raise ValueError("target_modules must name at least one module, e.g. q_proj,v_proj")
        if self.aux_loss_coeff < 0:
            raise ValueError(f"aux_loss_coeff must be >= 0, got {self.aux_loss_coeff}")


class GateRouter(nn.Module):
    """Gate W_g (no bias, PyTorch default init, as the reference) and a routing rule on its logits (MoLE)."""

    def __init__(self, in_features: int, num_experts: int, rule: Callable[[torch.Tensor], routing.Routing] | None):
        super().__init__()
        self.gate = nn.Linear(in_features, num_experts, bias=False)
        self.rule = rule  # None where a subclass overrides `decide`

    def projection(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(weight, bias) of the linear map from x to the logits `decide` reads."""
        return self.gate.weight, None

    def decide(self, logits: torch.Tensor) -> routing.Routing:
        assert self.rule is not None
        return self.rule(routing.full_precision(logits))

    def forward(self, x: torch.Tensor) -> routing.Routing:
        return self.decide(nn.functional.linear(x, *self.projection()))


class AdaptiveThresholdRouter(GateRouter):
    """AdaMoLE's router: the gate plus a threshold network nn.Linear(in, 1) with bias (default init)."""

    def __init__(self, in_features: int, num_experts: int, max_threshold: float):
        super().__init__(in_features, num_experts, rule=None)
        self.threshold = nn.Linear(in_features, 1)
        self.max_threshold = max_threshold

    def projection(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Gate and threshold logits in one map: [W_g; W_t], bias [0; b_t]."""
        bias = torch.cat([self.threshold.bias.new_zeros(self.gate.out_features), self.threshold.bias])
        return torch.cat([self.gate.weight, self.threshold.weight]), bias

    def decide(self, logits: torch.Tensor) -> routing.Routing:
        logits = routing.full_precision(logits)
        return routing.adaptive_threshold(logits[:, :-1], logits[:, -1:], self.max_threshold)


RoutingObserver = Callable[["MoeLoraAdapter", routing.Routing, torch.Size], None]


class MoeLoraAdapter(nn.Module):
    """Adapter branch of one linear layer: y_moe = Σ_i w_i(x) · s · B_i A_i dropout_i(x)."""

    def __init__(self, experts: LoraExperts, router: GateRouter):
        super().__init__()
        self.experts = experts
        self.router = router
        self.aux_loss: torch.Tensor | None = None  # load-balancing loss of the last training forward
        self.observer: RoutingObserver | None = None  # set by ExpertStatistics during evaluation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.is_autocast_enabled(x.device.type):
            x = x.to(self.experts.lora_A.dtype)
        tokens = x.reshape(-1, x.shape[-1])  # routing is per token; pads are routed too (reference)
        projected, logits = self.experts.project(tokens, *self.router.projection())  # one GEMM for A and the router
        decision = self.router.decide(logits)  # on the un-dropped x, in fp32 (routing.py)
        aux_loss = routing.load_balancing_loss(decision) if self.training else None  # in a replay too: checkpointing matches its saved tensors
        if not replaying():  # checkpointing's replay in backward sees the same tokens again; they count once
            self.aux_loss = aux_loss
            if self.observer is not None:
                self.observer(self, decision, x.shape[:-1])
        return self.experts(tokens, decision.weights, decision.selected, projected).reshape(*x.shape[:-1], -1)


def moe_adapters(model: nn.Module) -> list[tuple[str, MoeLoraAdapter]]:
    """(name of the adapted linear in the base model, its adapter): `model.layers.0.self_attn.q_proj`
    for PEFT's `base_model.model.model.layers.0.self_attn.q_proj.adapter.default`."""
    return [(_linear_name(name), module) for name, module in model.named_modules() if isinstance(module, MoeLoraAdapter)]


def _linear_name(adapter_name: str) -> str:
    return re.sub(r"\.adapter(\.[^.]+)?$", "", adapter_name.removeprefix("base_model.model."))


class MoeLoraMethod(Method):
    """Apply, aux loss, statistics and tags of a mixture of LoRA experts; subclasses pick the router."""

    @property
    def routing_variant(self) -> str:
        raise NotImplementedError

    def make_router(self, in_features: int) -> GateRouter:
        """A module mapping tokens (T, in) to a `routing.Routing`."""
        raise NotImplementedError

    def routing_tags(self) -> dict[str, str]:
        raise NotImplementedError

    def make_adapter(self, linear: nn.Linear) -> MoeLoraAdapter:
        """The adapter branch of one linear (also what the PEFT integration builds per layer)."""
        cfg = self.config
        experts = LoraExperts(linear.in_features, linear.out_features, cfg.num_experts, cfg.expert_rank, cfg.scaling, cfg.dropout, cfg.dropout_mode)
        return MoeLoraAdapter(experts, self.make_router(linear.in_features))

    def apply(self, model: nn.Module) -> nn.Module:
        from .peft_tuner import mixture_model  # PEFT takes seconds to import; listing methods must not wait for it

        return mixture_model(self, model)

    def aux_loss(self, model: nn.Module) -> torch.Tensor | None:
        """Sum (not mean, as the reference) of the per-layer losses of adapters in training mode."""
        losses = [m.aux_loss for m in model.modules() if isinstance(m, MoeLoraAdapter) and m.training and m.aux_loss is not None]
        return torch.stack([loss.float() for loss in losses]).sum() if losses else None

    def statistics(self, model: nn.Module) -> StatisticsRecorder:
        return ExpertStatistics(model, moe_adapters(model))

    def tags(self) -> dict[str, str]:
        cfg = self.config
        return {
            "routing": self.routing_variant,
            "num_experts": str(cfg.num_experts),
            "expert_rank": str(cfg.expert_rank),
            "expert_scaling": f"{cfg.scaling:g}",
            "dropout_mode": cfg.dropout_mode,
            **self.routing_tags(),
        }
