"""MoLE, AdaMoLE and Soft/Sparse MoA as PEFT methods: their config, tuner layer and tuner, and the
one adapter path every built-in method takes (LoRA is PEFT's own): `get_peft_model` creates the adapter
the harness trains, `save_pretrained`'s layout stores it, `PeftModel.from_pretrained` loads it.

The tuner layers hold the modules the methods define (`MoeLoraAdapter`, `GatedLora`, `MoaBlock`). A
saved config names its method, found in catalog.py (not the registry, which sits above the methods);
peft_integration.py enters these classes in PEFT's tables. What PEFT cannot do with a token-routed
mixture is refused loudly: merging into dense weights.
"""

import copy
import dataclasses
import enum
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, cast

import peft
import torch
from peft import PeftConfig, PeftModel, get_peft_model, get_peft_model_state_dict
from peft.tuners.tuners_utils import BaseTuner, BaseTunerLayer
from peft.utils import TaskType
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from ..base.errors import UserError
from ..base.upstream import peft_type_registered
from .catalog import ADAPTER_WEIGHTS, configure, registered
from .peft_hook import register_with_peft

ADAPTER_ATTRIBUTE = "adapter"  # a tuner layer's branches: q_proj.adapter.<adapter name>.experts.lora_A


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
    task_type: TaskType | str | None = TaskType.CAUSAL_LM  # None: a plain PeftModel around any nn.Module

    def __post_init__(self):
        super().__post_init__()
        peft_type = registered(self.method).peft_type
        if peft_type not in list(MixtureType):
            raise ValueError(f"{self.method} is not a mixture method; choose one of {', '.join(t.value for t in MixtureType)} (LoRA is PEFT's own)")
        self.peft_type = MixtureType(peft_type)
        options = self.build().config
        self.method_config = dataclasses.asdict(options)
        self.target_modules = list(getattr(options, "target_modules", None) or options.lora_targets)

    def build(self):
        """The harness Method with these options (validated as on the command line)."""
        method_class = registered(self.method)
        return method_class(configure(method_class, self.method_config))


class MixtureLinear(nn.Module, BaseTunerLayer):
    """A frozen linear plus one mixture branch per adapter name: base(x) + Σ_active adapter(x), each
    branch's output cast to the base's dtype."""

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

    Subclasses say how to build one branch (`make_branch`).
    """

    prefix = ADAPTER_ATTRIBUTE
    tuner_layer_cls = MixtureLinear
    target_module_mapping: ClassVar[dict] = {}  # type: ignore[misc]  # peft annotates it per instance; every tuner sets it on the class

    def make_branch(self, config: MixtureConfig, adapter_name: str, key: str, linear: nn.Linear) -> nn.Module:
        raise NotImplementedError

    def _create_and_replace(self, peft_config, adapter_name, target, target_name, parent, current_key, parameter_name=None):
        if isinstance(target, MixtureLinear):
            target.add(adapter_name, self.make_branch(peft_config, adapter_name, current_key, cast(nn.Linear, target.get_base_layer())))
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


class MoeLoraTuner(MixtureTuner):
    """MoLE and AdaMoLE: every targeted linear gets its own `MoeLoraAdapter` (experts + router)."""

    def make_branch(self, config, adapter_name, key, linear):
        return config.build().make_adapter(linear)


class MoaTuner(MixtureTuner):
    """Soft/Sparse MoA under PEFT: the per-block routers and non-LoRA experts live on the tuner.

    A MoA adapter is more than per-linear branches: each decoder layer has a `MoaBlock` (router,
    threshold, prompt expert, parallel adapter) driven by hooks. PEFT keeps model-level state on the
    tuner itself (as VeRA does with its shared matrices), so the blocks sit in `moa_blocks[adapter]`
    (saved as `base_model.moa_blocks.<layer>.*`), the LoRA experts in `MixtureLinear` layers, and the
    hooks are removed whenever PEFT disables, deletes or unloads the adapter. One MoA adapter per model:
    two would fight over the same hooks.
    """

    uses_shared_state = True

    def _check_new_adapter_config(self, config) -> None:
        if len(self.peft_config) > 1:
            raise ValueError("a model holds one MoA adapter at a time; load the second into a fresh base model")

    def _pre_injection_hook(self, model: nn.Module, config, adapter_name: str) -> None:
        self.moa_blocks = nn.ModuleDict()
        self._hooks: list = []
        self._blocks_by_layer = config.build().make_blocks(model)  # layer name + "." → block, before any LoRA expert
        self.moa_blocks[adapter_name] = nn.ModuleList(self._blocks_by_layer.values())

    def make_branch(self, config, adapter_name, key, linear):
        return config.build().make_lora(self._blocks_by_layer, key, linear)

    def _post_injection_hook(self, model: nn.Module, config, adapter_name: str) -> None:
        self._attach()
        self.moa_blocks.requires_grad_(not config.inference_mode)

    def _attach(self) -> None:
        if not self._hooks:
            for prefix, block in self._blocks_by_layer.items():
                self._hooks += block.attach(self.model.get_submodule(prefix.removesuffix(".")))

    def _detach(self) -> None:
        for handle in self._hooks:
            handle.remove()
        self._hooks = []

    # PEFT's adapter switches, extended to the blocks and their hooks --------------------------

    def _enable_adapter_layers(self, enabled: bool = True) -> None:
        super()._enable_adapter_layers(enabled)
        self._attach() if enabled else self._detach()
        self.moa_blocks.requires_grad_(enabled)  # as PEFT's layers: enabling makes the adapter trainable

    def set_adapter(self, adapter_name, inference_mode: bool = False) -> None:
        super().set_adapter(adapter_name, inference_mode)
        self.moa_blocks.requires_grad_(not inference_mode)

    def set_requires_grad(self, adapter_names, requires_grad: bool = True) -> None:
        super().set_requires_grad(adapter_names, requires_grad)
        names = [adapter_names] if isinstance(adapter_names, str) else adapter_names
        for name in names:
            self.moa_blocks[name].requires_grad_(requires_grad)

    def delete_adapter(self, adapter_name: str) -> None:
        super().delete_adapter(adapter_name)
        self._detach()
        del self.moa_blocks[adapter_name]

    def unload(self) -> nn.Module:
        self._detach()
        self.moa_blocks = nn.ModuleDict()
        return super().unload()


def tuner_class(peft_type: str) -> type[MixtureTuner]:
    return MoaTuner if peft_type in (MixtureType.SOFT_MOA, MixtureType.SPARSE_MOA) else MoeLoraTuner


# ---------------------------------------------------------------------------------------------
# The one adapter path: create, save and load through PEFT.


def mixture_model(method, model: nn.Module) -> PeftModel:
    """`model` with a fresh adapter of the mixture `method`, made by PEFT's own `get_peft_model`."""
    task_type = TaskType.CAUSAL_LM if hasattr(model, "prepare_inputs_for_generation") else None  # a language model, or any module
    config = MixtureConfig(method=method.name, method_config=dataclasses.asdict(method.config), task_type=task_type)
    assert isinstance(config.peft_type, MixtureType), "MixtureConfig.__post_init__ sets it"
    if not peft_type_registered(config.peft_type, MixtureConfig):
        raise UserError(f"PEFT {peft.__version__} defines its own {config.peft_type.value}, so {method.name} cannot run through it; use peft 0.21")
    return cast(PeftModel, get_peft_model(model, config))


def save_peft_adapter(model: nn.Module, path: Path, base_model: dict) -> None:
    """Write the adapter of `model` (the PeftModel a method's `apply` returned) as PEFT does."""
    if not isinstance(model, PeftModel):
        raise TypeError(f"save takes the model the method's apply returned (a PeftModel), got {type(model).__name__}")
    config = copy.copy(model.peft_config["default"])
    state = get_peft_model_state_dict(model, save_embedding_layers=False)
    config.base_model_name_or_path = base_model["id"]
    config.revision = base_model.get("revision")
    config.inference_mode = True
    config.save_pretrained(str(path))
    save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(path / ADAPTER_WEIGHTS), metadata={"format": "pt"})


def from_harness_names(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A mixture saved before the harness trained through PEFT (its own injection, no adapter_config.json)
    under the names the PeftModel has now: `model.layers.0.self_attn.q_proj.adapter.experts.lora_A` →
    `base_model.model.model.layers.0.self_attn.q_proj.adapter.default.experts.lora_A`, and MoA's
    `model.layers.3.moa.router.weight` → `base_model.moa_blocks.default.3.router.weight`."""
    renamed = {}
    for key, tensor in tensors.items():
        if not key.startswith("base_model."):
            key = re.sub(r"^(?:.*\.)?layers\.(\d+)\.moa\.", r"base_model.moa_blocks.default.\1.", key)
            key = re.sub(rf"^(?!base_model\.)(.*)\.{ADAPTER_ATTRIBUTE}\.", rf"base_model.model.\1.{ADAPTER_ATTRIBUTE}.default.", key)
        renamed[key] = tensor
    return renamed


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


DEFINED = True  # what peft_hook waits for before it imports peft_integration, which registers these classes
register_with_peft()
