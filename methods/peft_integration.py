"""MoLE, AdaMoLE and Soft/Sparse MoA as first-class PEFT methods.

After `import adamole_bench`, `PeftModel.from_pretrained(base, folder)` restores a saved mixture,
`get_peft_model(base, MixtureConfig(method="adamole"))` adds a fresh one, and `save_pretrained` writes
PEFT's layout (adapter_config.json + adapter_model.safetensors). The layers PEFT builds hold the very
modules the harness trains (`MoeLoraAdapter`, `GatedLora`, `MoaBlock`), so the logits are identical.

Why not `peft.utils.register_peft_method`: in PEFT 0.21 it refuses any name that is not already a
member of its closed `PeftType` enum, so an outside package cannot call it for a new method. We fill
the same three tables it fills (`peft.mapping.PEFT_TYPE_TO_{CONFIG,TUNER,PREFIX}_MAPPING`), keyed by
our own str-enum, which compares and hashes equal to the "peft_type" string PEFT reads from JSON.

What PEFT cannot do with a token-routed mixture is refused loudly: merging into dense weights.
"""

import copy
import dataclasses
import enum
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, cast

import peft
import torch
from peft import PeftConfig, PeftModel, get_peft_model_state_dict
from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING, PEFT_TYPE_TO_PREFIX_MAPPING, PEFT_TYPE_TO_TUNER_MAPPING
from peft.tuners.tuners_utils import BaseTuner, BaseTunerLayer
from peft.utils import TaskType
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from ..base.errors import UserError
from .experts import AdaptedLinear
from .registry import ADAPTER_WEIGHTS, Method, build_method, get_method_class

ADAPTER_ATTRIBUTE = "adapter"  # the tuner layers keep the harness's AdaptedLinear names: q_proj.adapter.experts.lora_A
PEFT_ROOT = "base_model.model."  # what PeftModel puts in front of the base model's own names
# PEFT's method tables, typed by its closed PeftType enum; we key them by MixtureType, which compares and hashes equal.
_CONFIGS = cast(dict[str, type[PeftConfig]], PEFT_TYPE_TO_CONFIG_MAPPING)
_TUNERS = cast(dict[str, type[BaseTuner]], PEFT_TYPE_TO_TUNER_MAPPING)
_PREFIXES = cast(dict[str, str], PEFT_TYPE_TO_PREFIX_MAPPING)


class MixtureType(str, enum.Enum):
    """Each built-in mixture's `Method.peft_type`, the "peft_type" of its adapter_config.json."""

    MOLE = "MOLE"
    ADAMOLE = "ADAMOLE"
    SOFT_MOA = "SOFT_MOA"
    SPARSE_MOA = "SPARSE_MOA"


@dataclass
class MixtureConfig(PeftConfig):
    """A mixture adapter for PEFT: our method's name and options (the same dict the harness saves).

    `target_modules` is derived from the method options (MoLE/AdaMoLE `target_modules`, MoA
    `lora_targets`); PEFT reads it to decide which linears to wrap.
    """

    method: str = "adamole"
    method_config: dict = field(default_factory=dict)
    target_modules: list[str] | None = None

    def __post_init__(self):
        super().__post_init__()
        peft_type = get_method_class(self.method).peft_type
        if peft_type not in list(MixtureType):
            raise ValueError(f"{self.method} is not a mixture method; choose one of {', '.join(t.value for t in MixtureType)} (LoRA is PEFT's own)")
        self.peft_type = MixtureType(peft_type)
        self.task_type = self.task_type or TaskType.CAUSAL_LM
        options = self.build().config
        self.method_config = dataclasses.asdict(options)
        self.target_modules = list(getattr(options, "target_modules", None) or options.lora_targets)

    def build(self) -> Method:
        """The harness Method with these options (validated as on the command line)."""
        return build_method(self.method, self.method_config)


class MixtureLinear(nn.Module, BaseTunerLayer):
    """A frozen linear plus one mixture branch per adapter name; with one active adapter the forward is
    exactly AdaptedLinear's: base(x) + adapter(x).to(x.dtype)."""

    adapter_layer_names = (ADAPTER_ATTRIBUTE,)

    def __init__(self, base_layer: nn.Linear, adapter_name: str, branch: nn.Module):
        super().__init__()
        self.base_layer = base_layer
        self.adapter = nn.ModuleDict()
        self.merged_adapters = []
        self.add(adapter_name, branch)
        self.set_adapter(adapter_name)

    def add(self, adapter_name: str, branch: nn.Module) -> None:
        self.adapter[adapter_name] = branch.to(self.base_layer.weight.device)

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        result = self.base_layer(x, *args, **kwargs)
        if self.disable_adapters:
            return result
        for name in self.active_adapters:
            if name in self.adapter:
                result = result + self.adapter[name](x).to(x.dtype)
        return result

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        raise ValueError("a token-routed mixture cannot be merged into dense weights: every token mixes different experts")


class MixtureTuner(BaseTuner):
    """What every mixture shares: MixtureLinear layers, no merging, adapter names stripped from keys.

    Subclasses say how to build one branch (`make_branch`) and where the harness keeps what else it
    trains (`harness_state_dict`), so a harness-trained model saves straight into PEFT's layout.
    """

    prefix = ADAPTER_ATTRIBUTE
    tuner_layer_cls = MixtureLinear
    target_module_mapping: ClassVar[dict] = {}  # type: ignore[misc]  # PEFT declares it without ClassVar, yet its tuners set it on the class

    def make_branch(self, config: MixtureConfig, adapter_name: str, key: str, linear: nn.Linear) -> nn.Module:
        raise NotImplementedError

    def _create_and_replace(self, peft_config, adapter_name, target, target_name, parent, current_key, parameter_name=None):
        if isinstance(target, MixtureLinear):
            target.add(adapter_name, self.make_branch(peft_config, adapter_name, current_key, target.base_layer))
        elif isinstance(target, nn.Linear):
            layer = MixtureLinear(target, adapter_name, self.make_branch(peft_config, adapter_name, current_key, target))
            self._replace_module(parent, target_name, layer, target)
        else:
            raise ValueError(f"{current_key} is a {type(target).__name__}; mixture adapters wrap nn.Linear layers only")

    def _check_merge_allowed(self):
        raise ValueError("a token-routed mixture cannot be merged into dense weights: every token mixes different experts")

    @classmethod
    def _remove_adapter_name_from_key(cls, key: str, adapter_name: str) -> str:
        """`...q_proj.adapter.default.experts.lora_A` → `...q_proj.adapter.experts.lora_A` (PEFT's default
        only strips the name when it is second to last, which a nested branch never has)."""
        return re.sub(rf"\.({cls.prefix}|moa_blocks)\.{re.escape(adapter_name)}(?=\.|$)", r".\1", key)

    @classmethod
    def harness_state_dict(cls, model: nn.Module) -> dict[str, torch.Tensor]:
        """The adapter tensors of a harness-adapted model under the keys PEFT saves them with."""
        state = {}
        for name, module in model.named_modules():
            if isinstance(module, AdaptedLinear):
                for key, tensor in module.adapter.state_dict().items():
                    state[f"{PEFT_ROOT}{name}.{ADAPTER_ATTRIBUTE}.{key}"] = tensor
        return state


class MoeLoraTuner(MixtureTuner):
    """MoLE and AdaMoLE: every targeted linear gets its own `MoeLoraAdapter` (experts + router)."""

    def make_branch(self, config, adapter_name, key, linear):
        return config.build().make_adapter(linear)


def tuner_class(peft_type: str) -> type[MixtureTuner]:
    if peft_type in (MixtureType.SOFT_MOA, MixtureType.SPARSE_MOA):
        from .moa.peft_model import MoaTuner

        return MoaTuner
    return MoeLoraTuner


def register() -> None:
    """Make PEFT know our mixtures (idempotent). Runs when this module is imported, which
    `import adamole_bench` arranges for the moment `peft` is imported (methods/peft_hook.py)."""
    for peft_type in MixtureType:
        if _CONFIGS.get(peft_type) is MixtureConfig:
            continue
        if peft_type in _CONFIGS:  # never break `import peft`; saving refuses instead
            warnings.warn(f"PEFT {peft.__version__} has its own {peft_type.value}; adamole-bench leaves it registered", stacklevel=2)
            continue
        _CONFIGS[peft_type] = MixtureConfig
        _TUNERS[peft_type] = tuner_class(peft_type)
        _PREFIXES[peft_type] = ADAPTER_ATTRIBUTE


register()


# ---------------------------------------------------------------------------------------------
# The harness's save and load in PEFT's layout.


def save_peft_adapter(method: Method, model: nn.Module, path: Path, base_model: dict) -> None:
    """Write `model`'s adapter as PEFT would: a PeftModel (LoRA) as is, a harness mixture converted."""
    if isinstance(model, PeftModel):
        config = copy.copy(model.peft_config["default"])
        state = get_peft_model_state_dict(model, save_embedding_layers=False)
    else:
        config = MixtureConfig(method=method.name, method_config=dataclasses.asdict(method.config))
        peft_type = MixtureType(config.peft_type)
        if _CONFIGS.get(peft_type) is not MixtureConfig:
            raise UserError(
                f"PEFT {peft.__version__} defines its own {peft_type.value}, so {method.name} cannot be saved in its layout; use peft 0.21"
            )
        state = tuner_class(peft_type).harness_state_dict(model)
    config.base_model_name_or_path = base_model["id"]
    config.revision = base_model.get("revision")
    config.inference_mode = True
    config.save_pretrained(str(path))
    save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(path / ADAPTER_WEIGHTS), metadata={"format": "pt"})


def load_peft_adapter(model: nn.Module, path: Path) -> PeftModel:
    """PeftModel.from_pretrained, but a checkpoint that does not fit the model fails instead of warning."""
    peft_model = PeftModel.from_pretrained(model, str(path))
    with safe_open(str(path / ADAPTER_WEIGHTS), "pt") as stored:
        saved = set(stored.keys())
    expected = set(get_peft_model_state_dict(peft_model, save_embedding_layers=False))
    if saved != expected:
        missing, extra = sorted(expected - saved)[:3], sorted(saved - expected)[:3]
        raise UserError(f"adapter at {path} does not fit this base model: missing {missing}, unexpected {extra}")
    return peft_model
