"""Soft/Sparse MoA options. Defaults are the reference's commonsense scripts (spec §1, §5)."""

from dataclasses import dataclass, field
from typing import Literal

# LoRA targets the reference supports, in its fixed router-column order (spec §1); "prompt" sits
# between the attention inputs and o_proj, the parallel adapter is always last.
LORA_TARGET_ORDER = ["q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "gate_proj", "down_proj"]


@dataclass
class MoaConfig:
    rank: int = 8
    alpha: float = 8.0
    lora_targets: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "down_proj"])
    adapter_size: int = 16  # parallel adapter bottleneck beside the MLP
    prompt_length: int = 10  # prompt-tuning tokens per layer; 0 disables the prompt expert
    router: Literal["linear", "swiglu"] = "linear"
    swiglu_factor: int = 4  # SwiGLU router hidden size = num_experts * swiglu_factor

    @property
    def scaling(self) -> float:
        return self.alpha / self.rank

    def validate(self) -> None:
        if self.rank < 1 or self.alpha <= 0:
            raise ValueError(f"rank must be >= 1 and alpha > 0, got rank={self.rank}, alpha={self.alpha}")
        unknown = [t for t in self.lora_targets if t not in LORA_TARGET_ORDER]
        if unknown:
            raise ValueError(f"lora_targets {unknown} not supported; choose from {', '.join(LORA_TARGET_ORDER)}")
        if self.adapter_size < 1:
            raise ValueError(f"adapter_size must be >= 1, got {self.adapter_size}")
        if self.prompt_length < 0:
            raise ValueError(f"prompt_length must be >= 0, got {self.prompt_length}")
        if self.swiglu_factor < 1:
            raise ValueError(f"swiglu_factor must be >= 1, got {self.swiglu_factor}")


@dataclass
class SoftMoaConfig(MoaConfig):
    """Soft MoA: every expert runs on every token, scaled by its sigmoid gate."""


@dataclass
class SparseMoaConfig(MoaConfig):
    """Sparse MoA: an expert runs on a token iff its gate ≥ a learned per-token threshold.

    threshold_weights="faithful" keeps the reference's mixing weight g = w·1[w ≥ t], through
    which the threshold gets no gradient (it stays at its random init, spec §10.1).
    "adaptive" uses g = (w − t)·1[w ≥ t] (AdaMoLE-style), so the threshold trains.
    """

    prompt_length: int = 0  # the reference's sparse scripts disable the prompt expert
    max_threshold: float = 0.5
    const_threshold: bool = False  # t = max_threshold for every token (no threshold layer)
    threshold_weights: Literal["faithful", "adaptive"] = "faithful"

    def validate(self) -> None:
        super().validate()
        if not 0.0 < self.max_threshold <= 1.0:
            raise ValueError(f"max_threshold must be in (0, 1], got {self.max_threshold}")
