"""`adamole-bench plan` after its flags are parsed: the settings, the estimate per trial, the table."""

from pathlib import Path

from rich.console import Console

from ..settings.load import load_config
from .memory import device_memory, parse_memory, plan, render


def plan_command(config: Path | None, overrides: list[str], memory: str | None, console: Console) -> None:
    """Print each trial's training memory and whether it fits `memory` (default: the GPU's, else RAM)."""
    capacity, where = (parse_memory(memory), "--device-memory") if memory is not None else device_memory()
    experiment = load_config(config, overrides)
    console.print(render(experiment, plan(experiment), capacity, where))
