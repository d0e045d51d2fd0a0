"""Building one experiment's settings: defaults ← YAML file ← CLI flags ← `key=value` overrides, then
every check (the config's own, then each grid point's) before any work.

Above config.py and grid.py: the grid is read from the file and the command line here, so neither of
them needs the other's loader."""

from collections.abc import Sequence
from pathlib import Path

from ...base.errors import UserError
from .config import ExperimentConfig, parse_override, read_yaml_mapping, set_fields
from .grid import grid_override, grid_points, grid_section


def _set_with_grid(config: ExperimentConfig, values: dict) -> None:
    """Settings from a mapping whose `grid:` entry, if any, names swept settings (harness/settings/grid.py)."""
    values = dict(values)
    if "grid" in values:
        config.grid.update(grid_section(values.pop("grid")))
    set_fields(config, values)


def load_config(path: str | Path | None = None, overrides: Sequence[str] = (), **cli: object) -> ExperimentConfig:
    """Defaults, then the YAML file, then CLI flags (`cli`, None = not given), then key=value overrides."""
    config = ExperimentConfig()
    if path:
        _set_with_grid(config, read_yaml_mapping(path, "config file"))
    flags = {k: v for k, v in cli.items() if v is not None}
    for dotted, value in flags.items():
        if isinstance(value, str) and not value.strip():
            flag = "--" + dotted.rpartition("__")[2].replace("_", "-")
            raise UserError(f"{flag} is empty (an unset shell variable?); give a value or leave the flag out")
    for dotted, value in flags.items():
        section, _, name = dotted.rpartition("__")
        set_fields(config, {section: {name: value}} if section else {name: value})
    for text in overrides:
        swept = grid_override(text)  # `key=v1,v2`: a grid
        if swept:
            config.grid[swept[0]] = swept[1]
            continue
        _set_with_grid(config, parse_override(text))
        config.grid.pop(text.partition("=")[0].strip(), None)  # a plain value on the command line beats the file's grid
    config.validate()
    grid_points(config)  # every grid point is valid, or one line now
    return config
