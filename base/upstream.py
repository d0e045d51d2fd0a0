"""Every private API of peft and transformers adamole-bench relies on, in one place.

None of these names is part of its library's documented API, so any release may change them without a
deprecation. tests/test_upstream.py checks each one against the installed version and fails naming that
version, so an upgrade that breaks one is seen at once, here, rather than as a wrong number elsewhere.
Each library is imported inside the function that needs it: importing this module costs nothing, and a
caller pays only for the library it uses.
"""

from collections.abc import Callable

# BaseTuner's private hooks that the tuners in methods/peft_tuner.py override, with the
# parameters PEFT calls them with (PEFT has no public extension API for a tuner's injection).
PEFT_TUNER_HOOKS = {
    "_create_and_replace": ("self", "peft_config", "adapter_name", "target", "target_name", "parent", "current_key", "parameter_name"),
    "_check_new_adapter_config": ("self", "config"),
    "_check_merge_allowed": ("self",),
    "_enable_adapter_layers": ("self", "enabled"),
    "_pre_injection_hook": ("self", "model", "config", "adapter_name"),
    "_post_injection_hook": ("self", "model", "config", "adapter_name"),
    "_remove_adapter_name_from_key": ("key", "adapter_name"),
    "_replace_module": ("self", "parent", "child_name", "new_module", "child"),
}


def register_peft_type(peft_type: str, config_class: type, tuner_class: type, prefix: str) -> bool:
    """Enter a new method in PEFT's three method tables; False (nothing written) if PEFT already has one
    of that name.

    Why not `peft.utils.register_peft_method`: in peft 0.21 it refuses a name that is not already a member
    of its closed `PeftType` enum, so a package outside PEFT cannot register a new method with it. These
    are the tables it fills; `peft_type` is a str-enum, equal to the "peft_type" string of a saved config.
    """
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING, PEFT_TYPE_TO_PREFIX_MAPPING, PEFT_TYPE_TO_TUNER_MAPPING

    if PEFT_TYPE_TO_CONFIG_MAPPING.get(peft_type) is config_class:
        return True
    if peft_type in PEFT_TYPE_TO_CONFIG_MAPPING:
        return False
    PEFT_TYPE_TO_CONFIG_MAPPING[peft_type] = config_class
    PEFT_TYPE_TO_TUNER_MAPPING[peft_type] = tuner_class
    PEFT_TYPE_TO_PREFIX_MAPPING[peft_type] = prefix
    return True


def peft_type_registered(peft_type: str, config_class: type) -> bool:
    """Whether PEFT maps `peft_type` to `config_class` (ours, not a method of PEFT's own by that name)."""
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

    return PEFT_TYPE_TO_CONFIG_MAPPING.get(peft_type) is config_class


def set_name_or_path(config, name: str) -> None:
    """What `save_pretrained` writes as config.json's `_name_or_path` (else the machine path it loaded from)."""
    config._name_or_path = name


def attention_implementation(config) -> str | None:
    """The attention a transformers model was loaded with ("sdpa", "eager", ...)."""
    return getattr(config, "_attn_implementation", None)


def drop_gguf_quantizer(model) -> None:
    """Let a model dequantised from GGUF be saved: `save_pretrained` refuses while the quantizer is attached."""
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


def llama_rotate_half() -> Callable:
    """transformers' rotary-embedding helper for Llama, so MoA's prompt expert rotates exactly as attention."""
    from transformers.models.llama.modeling_llama import rotate_half

    return rotate_half


def length_grouped_sampler() -> type:
    """HF Trainer's sampler for `length_grouping: hf` (the order Trainer trains in)."""
    from transformers.trainer_pt_utils import LengthGroupedSampler

    return LengthGroupedSampler


def sdpa_attention() -> tuple[Callable, Callable]:
    """transformers' SDPA attention forward and its mask builder, wrapped by harness/model/precision.py."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.masking_utils import sdpa_mask

    return sdpa_attention_forward, sdpa_mask
