"""Make PEFT know the mixtures: after `import adamole_bench`, `PeftModel.from_pretrained(base, folder)` and
`AutoPeftModelForCausalLM.from_pretrained(folder)` restore a saved mixture, and
`get_peft_model(base, MixtureConfig(method="adamole"))` adds a fresh one.

Imported the moment PEFT is (methods/peft_hook.py), it imports the built-in methods, so a saved config's
method resolves, and writes PEFT's method tables through base/upstream.py (why not PEFT's
`register_peft_method` is said there).
"""

import warnings

import peft

from ..base.upstream import register_peft_type
from . import builtin  # noqa: F401  (a config PEFT reads names a built-in method: it must be registered)
from .peft_tuner import ADAPTER_ATTRIBUTE, MixtureConfig, MixtureType, tuner_class

__all__ = ["MixtureConfig", "register", "tuner_class"]


def register() -> None:
    """Make PEFT know our mixtures (idempotent)."""
    for peft_type in MixtureType:
        if not register_peft_type(peft_type, MixtureConfig, tuner_class(peft_type), ADAPTER_ATTRIBUTE):  # never break `import peft`; saving refuses
            warnings.warn(f"PEFT {peft.__version__} has its own {peft_type.value}; adamole-bench leaves it registered", stacklevel=2)


register()
