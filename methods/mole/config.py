from dataclasses import dataclass

from ..moe_lora import MoeLoraConfig

DEFAULT_TOP_K = 2


@dataclass
class MoleConfig(MoeLoraConfig):
    """MoLE routes each token by top_k OR by a fixed probability threshold, never both.

    With neither given, top_k = 2 (the reference requires one; its paper's k is not known).
    """

    top_k: int | None = None
    threshold: float | None = None

    def __post_init__(self):
        if self.top_k is None and self.threshold is None:
            self.top_k = DEFAULT_TOP_K

    def validate(self) -> None:
        super().validate()
        if self.top_k is not None and self.threshold is not None:
            raise ValueError(f"set exactly one of top_k and threshold, got top_k={self.top_k} and threshold={self.threshold}")
        if self.top_k is not None and not 1 <= self.top_k <= self.num_experts:
            raise ValueError(f"top_k must be in [1, num_experts={self.num_experts}], got {self.top_k}")
        if self.threshold is not None and not 0.0 < self.threshold <= 1.0:
            raise ValueError(f"threshold must be in (0, 1] (a softmax probability; 1/num_experts is the usual maximum), got {self.threshold}")
