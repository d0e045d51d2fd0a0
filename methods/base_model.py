"""`base`: the frozen base model with no adapter, the zero-shot reference point of every table."""

from dataclasses import dataclass

from torch import nn

from .catalog import register
from .method import Method


@dataclass
class BaseModelConfig:
    """No options: nothing is trained."""


@register
class BaseModelMethod(Method):
    name = "base"
    config_class = BaseModelConfig
    description = "no adapter, no training: the base model's zero-shot accuracy"
    trains = False

    def apply(self, model: nn.Module) -> nn.Module:
        return model.requires_grad_(False)
