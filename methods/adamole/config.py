from dataclasses import dataclass

from ..moe_lora import MoeLoraConfig


@dataclass
class AdaMoleConfig(MoeLoraConfig):
    """max_threshold caps τ = max_threshold·σ(W_t x + b); None means 1/num_experts (reference).

    Above 1/num_experts a token can select no expert and then gets no adapter update.
    """

    max_threshold: float | None = None

    @property
    def threshold_cap(self) -> float:
        return 1.0 / self.num_experts if self.max_threshold is None else self.max_threshold

    def validate(self) -> None:
        super().validate()
        if self.max_threshold is not None and not 0.0 < self.max_threshold <= 1.0:
            raise ValueError(f"max_threshold must be in (0, 1] (default 1/num_experts), got {self.max_threshold}")
