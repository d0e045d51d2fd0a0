"""`train.gradient_checkpointing`: keep each decoder layer's input, recompute its activations in backward.

Ours rather than transformers' `gradient_checkpointing_enable`: transformers (5.x) checkpoints a layer's
`forward`, leaving module hooks outside the replay, and the MoA methods do their routing in hooks on
the decoder layer, so the replay would find no gates. Here the whole layer call, hooks included, is
replayed: torch's non-reentrant checkpoint with the RNG state preserved, so dropout draws the same
masks, and `methods.recompute.replay` tells the methods not to record their side outputs twice.
"""

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers.modeling_layers import GradientCheckpointingLayer

from ...base.errors import UserError
from ...methods.recompute import replay


class _Checkpointed(nn.Module):
    """Mixed into a decoder layer's class while checkpointing is on: its call is checkpointed in training."""

    def __call__(self, *args, **kwargs):
        if not (self.training and torch.is_grad_enabled()):
            return super().__call__(*args, **kwargs)
        runs, call = 0, super().__call__  # bound now: a replay after the block has ended still finds it

        def layer_call(*args, **kwargs):
            nonlocal runs
            runs += 1
            with replay(runs > 1):
                return call(*args, **kwargs)

        return checkpoint(layer_call, *args, use_reentrant=False, preserve_rng_state=True, **kwargs)


def _checkpointed_class(cls: type) -> type:
    return _CLASSES.setdefault(cls, type(f"Checkpointed{cls.__name__}", (_Checkpointed, cls), {}))


_CLASSES: dict[type, type] = {}


@contextmanager
def gradient_checkpointing(model: nn.Module, enabled: bool) -> Iterator[None]:
    """Checkpoint every decoder layer of `model` inside the block; the one base is left as it was after."""
    if not enabled:
        yield
        return
    layers = [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]
    if not layers:
        raise UserError(f"{type(model).__name__} has no decoder layers to checkpoint; set train.gradient_checkpointing=false")
    originals = [type(layer) for layer in layers]
    for layer, cls in zip(layers, originals):
        layer.__class__ = _checkpointed_class(cls)
    try:
        yield
    finally:
        for layer, cls in zip(layers, originals):
            layer.__class__ = cls
