"""Method registry: a method is a config dataclass + a `Method` subclass, selected by name.

The harness talks to methods only through this interface. Built-ins register with
`@register`; a third-party package registers without touching the harness by declaring an
entry point in the `adamole_bench.methods` group (`name = "pkg.module:MyMethod"`) or by
calling `register` itself before running.
"""

from importlib.metadata import entry_points

from .catalog import ADAPTER_CONFIG, ADAPTER_WEIGHTS, PEFT_CONFIG, coerce, configure, register, registered, registered_methods
from .method import Method, StatisticsRecorder

__all__ = ["ADAPTER_CONFIG", "ADAPTER_WEIGHTS", "PEFT_CONFIG", "Method", "StatisticsRecorder", "coerce", "register"]

_entry_points_loaded = False


def all_methods() -> dict[str, type[Method]]:
    global _entry_points_loaded  # noqa: PLW0603 - entry points are read once per process
    from . import builtin  # noqa: F401  (registers the built-ins; here, not on top: they import torch and transformers)

    if not _entry_points_loaded:
        _entry_points_loaded = True
        for entry in entry_points(group="adamole_bench.methods"):
            register(entry.load())
    return registered_methods()


def get_method_class(name: str) -> type[Method]:
    all_methods()
    return registered(name)


def make_config(method: str, options: dict | None = None):
    """Build and validate a method's config from user options (unknown keys get a suggestion)."""
    return configure(get_method_class(method), options)


def build_method(name: str, options: dict | None = None) -> Method:
    return get_method_class(name)(make_config(name, options))
