"""What a fine-tuning method is: a `Method` subclass over a config dataclass (registered in catalog.py).

The bottom of methods/: every method module imports this, and it imports none of them, so the registry
(registry.py), which imports every built-in method, sits above them all.
"""

import dataclasses
import json
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any, ClassVar

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..base.errors import UserError
from .catalog import ADAPTER_CONFIG, ADAPTER_WEIGHTS, PEFT_CONFIG


class StatisticsRecorder(AbstractContextManager):
    """Collects method-specific statistics while evaluation runs inside the `with` block."""

    def metrics(self) -> dict[str, float]:
        return {}

    def figures(self) -> dict[str, Any]:
        """Artifact path → matplotlib figure (e.g. an expert-usage heatmap)."""
        return {}

    def tables(self) -> dict[str, Any]:
        """Artifact path → JSON-serialisable detail too large for metrics (e.g. per-expert usage)."""
        return {}

    def __exit__(self, *exc) -> None:
        return None


class Method:
    """How one fine-tuning method adapts a frozen base model."""

    name: ClassVar[str]
    config_class: ClassVar[type]
    description: ClassVar[str] = ""
    trains: ClassVar[bool] = True  # False for untrained baselines: the sweep skips training
    # True if a training step may leave some trainable parameters without a gradient (e.g. experts
    # skipped rather than weighted by 0): multi-process DDP must then search for them each step.
    ddp_find_unused_parameters: ClassVar[bool] = False

    def __init__(self, config):
        self.config = config

    def apply(self, model: nn.Module) -> nn.Module:
        """Inject adapters into the (frozen) base model; return the model to train and evaluate."""
        raise NotImplementedError

    def aux_loss(self, model: nn.Module) -> torch.Tensor | None:
        """Unweighted auxiliary loss of the last training forward (None: the method has none)."""
        return None

    @property
    def aux_loss_coeff(self) -> float:
        return float(getattr(self.config, "aux_loss_coeff", 0.0))

    def statistics(self, model: nn.Module) -> StatisticsRecorder:
        return StatisticsRecorder()

    def scoring(self, model: nn.Module, compute_dtype: torch.dtype = torch.float32) -> AbstractContextManager[nn.Module]:
        """The model as evaluation runs it at `compute_dtype` (e.g. LoRA merged into its base
        weights); the model is exactly as before when the context exits."""
        return nullcontext(model)

    def tags(self) -> dict[str, str]:
        """Facts worth filtering runs by (e.g. which routing variant); logged as MLflow tags."""
        return {}

    # Saving. Every adapter folder holds ADAPTER_CONFIG (method, options, tags and the base model as a
    # portable record) beside its weights. Methods PEFT can carry (`peft_type` set: LoRA and every
    # built-in mixture) store the weights in PEFT's layout, so `PeftModel.from_pretrained` loads them;
    # others store their trainable tensors under the harness's own names.
    peft_type: ClassVar[str | None] = None
    mergeable: ClassVar[bool] = False  # whether the adapter folds into the base weights (PEFT's merge_and_unload)

    def save(self, model: nn.Module, path: str | Path, base_model: dict) -> None:
        """Write the adapter of `model` to `path`; `base_model` is `BaseModel.reference()` (never a path)."""
        if not base_model or not base_model.get("id") or not base_model.get("fingerprint"):
            raise ValueError(f"save needs the base model's reference (id and fingerprint), got {base_model!r}")
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.save_weights(model, path, base_model)
        meta = {
            "method": self.name,
            "config": dataclasses.asdict(self.config),
            "tags": self.tags(),
            "base_model": base_model,
            "format": "peft" if self.peft_type else "adamole-bench",
        }
        (path / ADAPTER_CONFIG).write_text(json.dumps(meta, indent=2, sort_keys=True))

    def save_weights(self, model: nn.Module, path: Path, base_model: dict) -> None:
        if self.peft_type:
            from .peft_tuner import save_peft_adapter  # PEFT takes seconds to import; only saving needs it

            return save_peft_adapter(model, path, base_model)

        tensors = {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}
        save_file(tensors, str(path / ADAPTER_WEIGHTS))

    def load(self, model: nn.Module, path: str | Path) -> nn.Module:
        """`model` with the adapter saved at `path` (a PeftModel for the PEFT layout)."""

        path = Path(path)
        if (path / PEFT_CONFIG).exists():
            from .peft_tuner import load_peft_adapter  # as above

            return load_peft_adapter(model, path)
        adapted = self.apply(model)  # the harness layout: also adapters saved before the PEFT layout
        tensors = load_file(str(path / ADAPTER_WEIGHTS))
        if self.peft_type:
            from .peft_tuner import from_harness_names  # as above

            tensors = from_harness_names(tensors)
        expected = {n for n, p in adapted.named_parameters() if p.requires_grad}
        if set(tensors) != expected:
            missing, extra = sorted(expected - set(tensors))[:3], sorted(set(tensors) - expected)[:3]
            raise UserError(f"adapter at {path} does not match {self.name}: missing {missing}, unexpected {extra}")
        adapted.load_state_dict(tensors, strict=False)
        return adapted
