from dataclasses import dataclass, field

LLAMA_ATTENTION = ["q_proj", "k_proj", "v_proj", "o_proj"]


@dataclass
class LoraConfig:
    """Defaults are the AdaMoLE reference's train.py values: r=32, alpha=16 (scale 0.5), dropout 0.05."""

    rank: int = 32
    alpha: float = 16.0
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: list(LLAMA_ATTENTION))

    def validate(self) -> None:
        if self.rank < 1:
            raise ValueError(f"rank must be >= 1, got {self.rank}")
        if self.alpha <= 0:
            raise ValueError(f"alpha must be > 0, got {self.alpha}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if not self.target_modules:
            raise ValueError("target_modules must name at least one module, e.g. q_proj,v_proj")

    @property
    def scaling(self) -> float:
        return self.alpha / self.rank
