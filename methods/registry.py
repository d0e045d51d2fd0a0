"""Method registry: a method is a config dataclass + a `Method` subclass, selected by name.

The harness talks to methods only through this interface. Built-ins register with
`@register`; a third-party package registers without touching the harness by declaring an
entry point in the `adamole_bench.methods` group (`name = "pkg.module:MyMethod"`) or by
calling `register` itself before running.
"""

import dataclasses
import json
import math
import typing
from contextlib import AbstractContextManager, nullcontext
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from ..base.errors import UserError, unknown

ADAPTER_CONFIG = "adamole_bench_adapter.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PEFT_CONFIG = "adapter_config.json"


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
            from .peft_integration import save_peft_adapter

            return save_peft_adapter(self, model, path, base_model)
        from safetensors.torch import save_file

        tensors = {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}
        save_file(tensors, str(path / ADAPTER_WEIGHTS))

    def load(self, model: nn.Module, path: str | Path) -> nn.Module:
        """`model` with the adapter saved at `path` (a PeftModel for the PEFT layout)."""
        from safetensors.torch import load_file

        path = Path(path)
        if (path / PEFT_CONFIG).exists():
            from .peft_integration import load_peft_adapter

            return load_peft_adapter(model, path)
        adapted = self.apply(model)  # the harness layout: also adapters saved before the PEFT layout
        tensors = load_file(str(path / ADAPTER_WEIGHTS))
        expected = {n for n, p in adapted.named_parameters() if p.requires_grad}
        if set(tensors) != expected:
            missing, extra = sorted(expected - set(tensors))[:3], sorted(set(tensors) - expected)[:3]
            raise UserError(f"adapter at {path} does not match {self.name}: missing {missing}, unexpected {extra}")
        adapted.load_state_dict(tensors, strict=False)
        return adapted


def refuse_hf_save_pretrained(model: nn.Module) -> None:
    """Make `model.save_pretrained` fail loudly on a model adapted by the harness's own injection.

    HF would write the wrapped layers under names `from_pretrained` does not know, silently
    re-initialise q/k/v/o on load and drop the adapters; our save/load keep them.
    """
    if hasattr(model, "save_pretrained"):
        model.save_pretrained = _refused_save_pretrained


def _refused_save_pretrained(*_args, **_kwargs):
    raise UserError(
        "save_pretrained cannot store adamole-bench adapters (from_pretrained would drop them); use "
        "adamole_bench.save_adapter(model, DIR, method, base) and adamole_bench.load_adapter(DIR)"
    )


_METHODS: dict[str, type[Method]] = {}
_entry_points_loaded = False


def register(cls: type[Method]) -> type[Method]:
    """Class decorator: make a Method subclass selectable by its `name`."""
    if not dataclasses.is_dataclass(cls.config_class):
        raise TypeError(f"{cls.__name__}.config_class must be a dataclass")
    _METHODS[cls.name] = cls
    return cls


def all_methods() -> dict[str, type[Method]]:
    global _entry_points_loaded  # noqa: PLW0603 - entry points are read once per process
    from . import builtin  # noqa: F401  (registers the built-in methods)

    if not _entry_points_loaded:
        _entry_points_loaded = True
        for entry in entry_points(group="adamole_bench.methods"):
            register(entry.load())
    return dict(_METHODS)


def get_method_class(name: str) -> type[Method]:
    methods = all_methods()
    if name not in methods:
        raise unknown("method", name, methods, "see `adamole-bench list methods`")
    return methods[name]


def coerce(value, annotation, key: str):
    """YAML/CLI values to the dataclass field's type, with a clear error."""
    if value is None:
        return None
    origin, args = typing.get_origin(annotation), [a for a in typing.get_args(annotation) if a is not type(None)]
    if origin is typing.Literal:
        if value not in args:
            raise UserError(f"invalid value {value!r} for '{key}': expected one of {', '.join(map(str, args))}")
        return value
    if origin in (list, tuple):
        items = value.split(",") if isinstance(value, str) else list(value)
        empty = [i for i, item in enumerate(items) if item is None or (isinstance(item, str) and not item.strip())]
        if empty:
            shown = ",".join("" if i is None else str(i).strip() for i in items)
            kept = ",".join(str(i).strip() for i in items if i is not None and str(i).strip())
            raise UserError(
                f"'{key}' has an empty item (item {empty[0] + 1} of '{shown}'); separate items with single commas and no trailing comma, e.g. {key}={kept or 'a,b'}"
            )
        return origin(coerce(item, args[0] if args else str, key) for item in items)
    if origin is dict:  # e.g. resources.custom.NAME=1, or a YAML mapping
        if not isinstance(value, dict):
            raise UserError(f"invalid value {value!r} for '{key}': expected a mapping, e.g. {key}.NAME=1")
        return {str(name): coerce(item, args[1], f"{key}.{name}") for name, item in value.items()}
    if origin is not None and args:  # Optional[X] / X | None
        return coerce(value, args[0], key)
    try:
        if annotation is bool and isinstance(value, str):
            if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError
            return value.lower() in ("true", "1", "yes")
        if annotation in (int, float, str, bool):
            if annotation is int and isinstance(value, float) and not value.is_integer():
                raise ValueError
            return annotation(value)
    except (TypeError, ValueError):
        raise UserError(f"invalid value {value!r} for '{key}': expected {annotation.__name__}") from None
    return value


def make_config(method: str, options: dict | None = None):
    """Build and validate a method's config from user options (unknown keys get a suggestion)."""
    cls = get_method_class(method).config_class
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    values = {}
    for key, value in (options or {}).items():
        if key not in fields:
            raise unknown(f"option for method '{method}'", key, fields)
        if value is None and type(None) not in typing.get_args(hints[key]):  # `lora.rank=`: None would reach `rank < 1`
            default = getattr(cls(), key)
            shown = ",".join(map(str, default)) if isinstance(default, list) else default
            raise UserError(
                f"'{method}.{key}' needs a value (got none, e.g. '{method}.{key}=' with nothing after it); e.g. {method}.{key}={shown}, or leave it out"
            )
        values[key] = coerce(value, hints[key], f"{method}.{key}")
    config = cls(**values)
    for f in dataclasses.fields(config):  # nan/inf pass every `x <= 0` check, then poison the weights
        value = getattr(config, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            default = getattr(cls(), f.name)
            fix = f"e.g. {method}.{f.name}={default}" if default is not None else "or leave it unset"
            raise UserError(f"invalid {method} option: {f.name} must be a finite number, got {value}; {fix}")
    validate = getattr(config, "validate", None)
    if validate:
        try:
            validate()
        except ValueError as err:
            raise UserError(f"invalid {method} option: {err}") from None
    return config


def build_method(name: str, options: dict | None = None) -> Method:
    return get_method_class(name)(make_config(name, options))
