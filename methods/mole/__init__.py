"""MoLE: LoRA experts mixed by a softmax gate with top-k or fixed-threshold routing."""

from .config import MoleConfig
from .model import Mole

__all__ = ["Mole", "MoleConfig"]
