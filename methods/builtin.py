"""Importing this module registers every built-in method."""

from . import adamole, base_model, lora, mole  # noqa: F401
