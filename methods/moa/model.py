"""Soft MoA and Sparse MoA on any Llama-architecture transformers model, through hooks only.

Per decoder layer a `MoaBlock` owns the router, the optional threshold, the prompt expert and the
parallel adapter; LoRA experts wrap the target linears. PEFT builds both (`MoaTuner` in
peft_tuner.py keeps the blocks, its layers the LoRA experts). Hooks wire them into the unmodified
transformers forward:

- layer pre-hook: gates = mix(σ(router(x))) on the raw block input x, once per forward;
- q_proj hook / o_proj pre-hook: the prompt expert reads the query and adds its output to the
  attention output before o_proj (so LoRA_O sees it, as in the reference);
- mlp hook: adds the gated parallel adapter to the MLP output;
- layer hook: clears the per-forward state.

All experts run densely on every token; Sparse MoA's inactive experts have gate exactly 0,
which equals the reference's gather/scatter without host syncs.
"""

from functools import partial
from typing import Any

import torch
from torch import nn

from ..catalog import register
from ..method import Method
from ..recompute import replaying
from .config import LORA_TARGET_ORDER, MoaConfig, SoftMoaConfig, SparseMoaConfig
from .experts import BlockState, GatedLora, ParallelAdapter, PromptExpert
from .routing import ExpertThreshold, make_router
from .stats import MoaStatistics

ATTENTION_INPUT_TARGETS = ["q_proj", "k_proj", "v_proj"]


def lora_expert_name(target: str) -> str:
    return "lora_" + target.removesuffix("_proj")


def expert_names(config: MoaConfig) -> list[str]:
    """Router columns in the reference's fixed order [Q, K, V, (P), O, (UP), (GATE), DOWN, PA]."""
    ordered = [t for t in LORA_TARGET_ORDER if t in config.lora_targets]
    names = [lora_expert_name(t) for t in ordered if t in ATTENTION_INPUT_TARGETS]
    if config.prompt_length:
        names.append("prompt")
    names += [lora_expert_name(t) for t in ordered if t not in ATTENTION_INPUT_TARGETS]
    return names + ["parallel_adapter"]


def decoder_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Llama-style decoder layers (self_attn + mlp + the two RMSNorms), in forward order."""
    found = [
        (name, module)
        for name, module in model.named_modules()
        if all(hasattr(module, a) for a in ("self_attn", "mlp", "input_layernorm", "post_attention_layernorm"))
    ]
    if not found:
        raise ValueError(f"{type(model).__name__} has no Llama-style decoder layers (self_attn, mlp, input/post_attention_layernorm)")
    return found


def _first_argument(args: tuple, kwargs: dict, name: str) -> torch.Tensor:
    return args[0] if args else kwargs[name]


class MoaBlock(nn.Module):
    """One decoder layer's router and non-LoRA experts, plus the hooks that drive them."""

    def __init__(self, layer: nn.Module, config: MoaConfig, layer_index: int):
        super().__init__()
        attention: Any = layer.self_attn  # transformers' attention class differs per architecture; duck-typed
        hidden_size = attention.q_proj.in_features
        self.layer_index = layer_index
        self.expert_names = expert_names(config)
        self.state = BlockState()
        self.recorder: MoaStatistics | None = None  # set while `statistics()` is active
        self.router = make_router(config.router, hidden_size, len(self.expert_names), config.swiglu_factor)
        self.threshold = None
        if isinstance(config, SparseMoaConfig):
            self.threshold = ExpertThreshold(hidden_size, config.max_threshold, config.const_threshold, config.threshold_weights)
        self.prompt = None
        if config.prompt_length:
            num_heads = attention.config.num_attention_heads
            num_kv_heads = num_heads // attention.num_key_value_groups
            self.prompt = PromptExpert(hidden_size, num_heads, num_kv_heads, attention.head_dim, config.prompt_length)
        self.parallel_adapter = ParallelAdapter(hidden_size, config.adapter_size)

    def column(self, expert: str) -> int:
        return self.expert_names.index(expert)

    def gates(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, d) raw residual stream → (B, T, E) mixing weights (fp32)."""
        x = x.to(next(self.router.parameters()).dtype)
        weights = torch.sigmoid(self.router(x))
        mixing, threshold = (weights, None) if self.threshold is None else self.threshold(x, weights)
        if self.recorder is not None and not replaying():  # checkpointing's replay sees the same tokens again
            self.recorder.observe(self.layer_index, weights.detach(), mixing.detach(), None if threshold is None else threshold.detach())
        return mixing

    def attach(self, layer: nn.Module) -> list:
        """Register the hooks on `layer` (after LoRA injection, so q_proj/o_proj are the wrapped modules);
        returns their handles (the PEFT integration removes them to disable or unload the adapter)."""
        handles = [
            layer.register_forward_pre_hook(self._start, with_kwargs=True),
            layer.register_forward_hook(self._finish),
            layer.get_submodule("mlp").register_forward_hook(self._add_parallel_adapter, with_kwargs=True),
        ]
        if self.prompt is not None:
            attention = layer.get_submodule("self_attn")
            handles.append(attention.get_submodule("q_proj").register_forward_hook(self._keep_query))
            handles.append(attention.get_submodule("o_proj").register_forward_pre_hook(partial(self._add_prompt, attention), with_kwargs=True))
        return handles

    def _start(self, layer, args, kwargs) -> None:
        self.state.gates = self.gates(_first_argument(args, kwargs, "hidden_states"))
        self.state.position_embeddings = kwargs.get("position_embeddings")

    def _finish(self, layer, args, output) -> None:
        self.state.clear()  # drop this forward's tensors (the autograd graph keeps what backward needs)

    def _add_parallel_adapter(self, mlp, args, kwargs, output):
        gate = self.state.gate(self.column("parallel_adapter"))
        return output + self.parallel_adapter(_first_argument(args, kwargs, "x"), gate).to(output.dtype)

    def _keep_query(self, q_proj, args, output) -> None:
        self.state.query = output

    def _add_prompt(self, attention, o_proj, args, kwargs):
        attn_output = _first_argument(args, kwargs, "input")
        assert self.prompt is not None  # the hook is registered only with a prompt expert
        prompt_output = self.prompt(
            self.state.query,
            self.state.position_embeddings,
            getattr(attention.k_proj, "base_layer", attention.k_proj),  # frozen base projections
            getattr(attention.v_proj, "base_layer", attention.v_proj),
            attention.scaling,
            self.state.gate(self.column("prompt")),
        )
        return (attn_output + prompt_output.to(attn_output.dtype),), {}


class _MoaMethod(Method):
    variant = ""

    def make_blocks(self, model: nn.Module) -> dict[str, MoaBlock]:
        """One MoaBlock per decoder layer, keyed by the layer's name + "." (created before any LoRA expert)."""
        blocks = {}
        for index, (name, layer) in enumerate(decoder_layers(model)):
            with torch.device(next(layer.parameters()).device):
                blocks[name + "."] = MoaBlock(layer, self.config, index)
        return blocks

    def make_lora(self, blocks: dict[str, MoaBlock], name: str, linear: nn.Linear) -> GatedLora:
        """The LoRA expert of linear `name`, gated by the router column of its layer's block."""
        block = next(b for prefix, b in blocks.items() if name.startswith(prefix))
        column = block.column(lora_expert_name(name.rpartition(".")[2]))
        with torch.device(linear.weight.device):
            return GatedLora(linear.in_features, linear.out_features, self.config.rank, self.config.scaling, block.state, column)

    def apply(self, model: nn.Module) -> nn.Module:
        from ..peft_tuner import mixture_model  # PEFT takes seconds to import; listing methods must not wait for it

        return mixture_model(self, model)

    def statistics(self, model: nn.Module) -> MoaStatistics:
        blocks = [m for m in model.modules() if isinstance(m, MoaBlock)]
        return MoaStatistics(model, blocks, self.variant)

    def tags(self) -> dict[str, str]:
        tags = {"moa.variant": self.variant, "moa.router": self.config.router, "moa.experts": ",".join(expert_names(self.config))}
        if isinstance(self.config, SparseMoaConfig):
            tags["moa.threshold"] = "const" if self.config.const_threshold else "learned"
            tags["moa.threshold_weights"] = self.config.threshold_weights
        return tags


@register
class SoftMoa(_MoaMethod):
    name = "soft-moa"
    variant = "soft"
    config_class = SoftMoaConfig
    peft_type = "SOFT_MOA"
    description = "Soft MoA: LoRA q,k,v,o,down + parallel adapter + prompt, sigmoid-gated per token by a per-block router"


@register
class SparseMoa(_MoaMethod):
    name = "sparse-moa"
    variant = "sparse"
    config_class = SparseMoaConfig
    peft_type = "SPARSE_MOA"
    description = "Sparse MoA: LoRA q,k,v,o,down + parallel adapter, expert active iff its gate ≥ a per-token threshold"
