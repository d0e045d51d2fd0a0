"""LoRA through stock PEFT: same init and forward as the AdaMoLE reference's own LoRA layer."""

from .config import LoraConfig
from .model import Lora

__all__ = ["Lora", "LoraConfig"]
