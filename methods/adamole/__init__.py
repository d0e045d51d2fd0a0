"""AdaMoLE: LoRA experts with a learned, per-token activation threshold."""

from .config import AdaMoleConfig
from .model import AdaMole

__all__ = ["AdaMole", "AdaMoleConfig"]
