"""Every private API of peft, transformers, lm-eval and MLflow adamole-bench relies on, in one place.

None of these names is part of its library's documented API, so any release may change them without a
deprecation. tests/test_upstream.py checks each one against the installed version and fails naming that
version, so an upgrade that breaks one is seen at once, here, rather than as a wrong number elsewhere.
Each library is imported inside the function that needs it: importing this module costs nothing, and a
caller pays only for the library it uses.
"""

# Imported where used: peft, transformers, lm_eval (see the docstring: a caller pays only for the library it uses)
import importlib
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any, cast

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
    configs, tuners, prefixes = _peft_method_tables()
    if configs.get(peft_type) is config_class:
        return True
    if peft_type in configs:
        return False
    configs[peft_type] = config_class
    tuners[peft_type] = tuner_class
    prefixes[peft_type] = prefix
    return True


def peft_type_registered(peft_type: str, config_class: type) -> bool:
    """Whether PEFT maps `peft_type` to `config_class` (ours, not a method of PEFT's own by that name)."""
    configs, _, _ = _peft_method_tables()
    return configs.get(peft_type) is config_class


def _peft_method_tables() -> tuple[dict[str, type], dict[str, type], dict[str, str]]:
    """PEFT's config, tuner and prefix tables by method name. PEFT types their keys as its closed PeftType
    enum; a str-enum member and its string compare and hash equal, so str keys reach the same entries."""
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING, PEFT_TYPE_TO_PREFIX_MAPPING, PEFT_TYPE_TO_TUNER_MAPPING

    return (
        cast(dict[str, type], PEFT_TYPE_TO_CONFIG_MAPPING),
        cast(dict[str, type], PEFT_TYPE_TO_TUNER_MAPPING),
        cast(dict[str, str], PEFT_TYPE_TO_PREFIX_MAPPING),
    )


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


# HFLM's private methods that the scorers in harness/evaluate/scoring.py override, with the parameters
# lm-eval calls them with (HFLM has no public hook for what a scorer computes or how it encodes).
HFLM_SCORER_HOOKS = {
    "_loglikelihood_tokens": ("self", "requests", "disable_tqdm", "override_bs"),
    "_model_call": ("self", "inps", "attn_mask", "labels"),
    "_select_cont_toks": ("self", "logits", "contlen", "inplen"),
    "_encode_pair": ("self", "context", "continuation"),
    "_model_generate": ("self", "context", "max_length", "stop", "generation_kwargs"),
}

# lm-eval's warnings about what adamole-bench does on purpose (an already-loaded model, a callable dataset
# for our tasks), by the lm-eval module that logs them: matched by text, as lm-eval gives them no code.
LM_EVAL_EXPECTED_WARNINGS = {
    "lm_eval.models.huggingface": ("`pretrained` model kwarg is not of type `str`", "Passed an already-initialized model through `pretrained`"),
    "lm_eval.api.task": ("Custom kwargs can be passed to `--metadata`",),
}

# How lm-eval's CLI reports an unknown task name (a plain ValueError, before any model is loaded).
LM_EVAL_TASKS_NOT_FOUND = "Tasks not found"

# The MLflow module that logs every database error with its traceback before raising it.
MLFLOW_DB_LOGGER = "mlflow.store.db.utils"


@contextmanager
def _replaced(module, replacements: dict[str, Any]) -> Iterator[None]:
    """`module`'s attributes set to `replacements` for the block, then restored; a name the installed
    release lacks is left alone (tests/test_upstream.py fails on it instead)."""
    originals = {name: getattr(module, name) for name in replacements if hasattr(module, name)}
    for name in originals:
        setattr(module, name, replacements[name])
    try:
        yield
    finally:
        for name, original in originals.items():
            setattr(module, name, original)


def lm_eval_environment() -> dict:
    """The environment record lm-eval adds to every result (torch's collect_env, pip packages, ...)."""
    from lm_eval.loggers.utils import add_env_info

    record: dict = {}
    add_env_info(record)
    return record


@contextmanager
def lm_eval_lookups_replaced(git_commit: Callable[[], str], add_env_info: Callable[[dict], None]) -> Iterator[None]:
    """lm-eval's evaluator with its `git describe` and environment lookups replaced for the block."""
    import lm_eval.evaluator

    with _replaced(lm_eval.evaluator, {"get_git_commit_hash": git_commit, "add_env_info": add_env_info}):
        yield


LM_EVAL_TQDM_MODULES = ("lm_eval.api.model", "lm_eval.api.task", "lm_eval.models.huggingface")


@contextmanager
def lm_eval_tqdm_replaced(tqdm: Callable) -> Iterator[None]:
    """The `tqdm` lm-eval's request building and HFLM's scoring loops call, replaced for the block."""
    with ExitStack() as stack:
        for name in LM_EVAL_TQDM_MODULES:
            stack.enter_context(_replaced(importlib.import_module(name), {"tqdm": tqdm}))
        yield


@contextmanager
def lm_eval_task_manager_replaced(factory: Callable) -> Iterator[None]:
    """The TaskManager class lm-eval's CLI builds its task index with, replaced for the block."""
    import lm_eval.tasks

    with _replaced(lm_eval.tasks, {"TaskManager": factory}):
        yield


def lm_eval_cli() -> Callable[[], None]:
    """lm-eval's CLI entry point: it reads sys.argv (lm-eval has no documented function taking arguments)."""
    from lm_eval.__main__ import cli_evaluate

    return cli_evaluate


def lm_eval_tasks_not_found(err: ValueError) -> bool:
    """Whether lm-eval raised `err` for a task name it does not know."""
    return str(err).startswith(LM_EVAL_TASKS_NOT_FOUND)
