"""Soft MoA and Sparse MoA: heterogeneous mixture of adapters (LoRA, parallel adapter, prompt) per block."""

from .config import SoftMoaConfig, SparseMoaConfig
from .model import SoftMoa, SparseMoa

__all__ = ["SoftMoa", "SoftMoaConfig", "SparseMoa", "SparseMoaConfig"]
