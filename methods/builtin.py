"""Importing this module registers every built-in method."""

from . import base_model, lora, moa  # noqa: F401
