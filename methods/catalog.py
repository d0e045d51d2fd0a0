"""The table of methods by name, the files a saved adapter holds, and how a method's options are read.

Below every method module: a method registers itself here as it is defined (`@register`), and the PEFT
integration (peft_tuner.py) reads a saved config's method from here, without importing the registry.
"""

import dataclasses
import math
import typing
from typing import Any, TypeVar

from ..base.errors import UserError, unknown

ADAPTER_CONFIG = "adamole_bench_adapter.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PEFT_CONFIG = "adapter_config.json"

# Method subclasses, typed loosely: method.py imports this module, so Method cannot be named here
# (registry.py hands them on as type[Method]).
_METHODS: dict[str, type[Any]] = {}
_MethodClass = TypeVar("_MethodClass", bound=type[Any])


def register(cls: _MethodClass) -> _MethodClass:
    """Class decorator: make a Method subclass selectable by its `name`."""
    if not dataclasses.is_dataclass(cls.config_class):
        raise TypeError(f"{cls.__name__}.config_class must be a dataclass")
    _METHODS[cls.name] = cls
    return cls


def registered_methods() -> dict[str, type[Any]]:
    return dict(_METHODS)


def registered(name: str) -> type[Any]:
    """The registered method class called `name` (registry.get_method_class also loads the built-ins)."""
    if name not in _METHODS:
        raise unknown("method", name, _METHODS, "see `adamole-bench list methods`")
    return _METHODS[name]


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


def configure(method_class: type[Any], options: dict | None = None):
    """Build and validate `method_class`'s config from user options (unknown keys get a suggestion)."""
    method, cls = method_class.name, method_class.config_class
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
