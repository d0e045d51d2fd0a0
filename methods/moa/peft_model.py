"""Soft/Sparse MoA under PEFT: the per-block routers and non-LoRA experts live on the tuner.

A MoA adapter is more than per-linear branches: each decoder layer has a `MoaBlock` (router,
threshold, prompt expert, parallel adapter) driven by hooks. PEFT keeps model-level state on the
tuner itself (as VeRA does with its shared matrices), so the blocks sit in `moa_blocks[adapter]`
(saved as `base_model.moa_blocks.<layer>.*`), the LoRA experts in `MixtureLinear` layers, and the
hooks are removed whenever PEFT disables, deletes or unloads the adapter. One MoA adapter per model:
two would fight over the same hooks.
"""

from torch import nn

from ..peft_tuner import MixtureTuner
from .model import decoder_layers


class MoaTuner(MixtureTuner):
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
            for name, layer in decoder_layers(self.model):
                self._hooks += self._blocks_by_layer[name + "."].attach(layer)

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

    @classmethod
    def harness_state_dict(cls, model: nn.Module) -> dict:
        """LoRA experts as every mixture, plus `model.layers.3.moa.*` → `base_model.moa_blocks.3.*`."""
        state = super().harness_state_dict(model)
        for index, (_, layer) in enumerate(decoder_layers(model)):
            state |= {f"base_model.moa_blocks.{index}.{key}": tensor for key, tensor in layer.moa.state_dict().items()}
        return state
