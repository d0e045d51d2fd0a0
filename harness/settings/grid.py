"""Hyperparameter grids: `key=v1,v2` overrides and the YAML `grid:` section, expanded into grid points.

Only settings that change a trial's result without changing what the sweep loads can be swept:
`train.<field>`, `eval.<field>` and `<method>.<option>`. A comma separates grid values, except in a
setting whose value is itself a list (e.g. `lora.target_modules`), where a comma separates the list's
items as it always did; to sweep such a setting, bracket every value:

    adamole.max_threshold=0.0625,0.125,0.25              three grid values
    lora.target_modules=q_proj,v_proj                    one value, a list of two modules
    lora.target_modules=[q_proj,v_proj],[q_proj,k_proj,v_proj,o_proj]   two grid values

Every grid point is the experiment config with the point's values set, validated before any work.
A trial records the swept values that apply to it (tags `grid.<key>`); they are in its resolved
config, hence in its config hash, so the same point reached with a plain override is the same trial.
"""

import copy
import itertools
import json
import typing
from dataclasses import dataclass

import yaml

from ...base.errors import UserError, unknown
from ...methods.registry import all_methods, make_config
from .config import EvalConfig, ExperimentConfig, TrainConfig, nested, set_fields

SECTIONS = ("train", "eval")
HOW = "sweep train.<field>, eval.<field> or <method>.<option> settings, e.g. adamole.max_threshold=0.0625,0.125"


def _field_type(owner, name: str, key: str, kind: str):
    hints = typing.get_type_hints(owner)
    if name not in hints:
        raise unknown(kind, key, [f"{key.rpartition('.')[0]}.{n}" for n in hints])
    annotation = hints[name]
    args = typing.get_args(annotation)
    inner = [a for a in args if a is not type(None)]
    return inner[0] if type(None) in args and len(inner) == 1 else annotation  # X | None → X


def setting_type(key: str):
    """The type a sweepable setting takes; a UserError for a key that cannot be swept."""

    head, _, name = key.partition(".")
    if not name or "." in name:
        raise UserError(f"cannot sweep '{key}': {HOW}")
    if head in SECTIONS:
        return _field_type({"train": TrainConfig, "eval": EvalConfig}[head], name, key, "setting")
    methods = all_methods()
    if head in methods:
        return _field_type(methods[head].config_class, name, key, f"option for method '{head}'")
    raise UserError(f"cannot sweep '{key}': {HOW} (methods, tasks and seeds are swept with --methods, --tasks, --seeds)")


def is_list_type(annotation) -> bool:
    return typing.get_origin(annotation) in (list, tuple)


def split_values(key: str, raw: str) -> list[str]:
    """Top-level comma-separated pieces of a value; commas inside [brackets] or a {mapping} stay in their piece."""
    pieces, depth, current = [], 0, ""
    for char in raw:
        depth += {"[": 1, "]": -1, "{": 1, "}": -1}.get(char, 0)
        if depth < 0:
            raise UserError(f"'{key}={raw}' closes a bracket it never opened")
        if char == "," and depth == 0:
            pieces.append(current)
            current = ""
        else:
            current += char
    if depth:
        raise UserError(f"'{key}={raw}' opens a bracket it never closes")
    return [*pieces, current]


def _load(key: str, piece: str):
    try:
        return yaml.safe_load(piece)
    except yaml.YAMLError:
        raise UserError(f"'{key}': cannot read the grid value '{piece}' (list values are written [a,b])") from None


def grid_override(text: str) -> tuple[str, list] | None:
    """`key=v1,v2,...` → (key, values) when it is a grid; None for a plain override (read as before)."""
    key, found, raw = text.partition("=")
    key = key.strip()
    if not found or key.partition(".")[0] not in (*SECTIONS, *_method_names()):
        return None  # not key=value, or a top-level setting: `seeds=0,1` is a list, as always
    pieces = split_values(key, raw)
    if len(pieces) < 2:
        return None
    empty = [i for i, piece in enumerate(pieces) if not piece.strip()]
    listed = is_list_type(setting_type(key))  # an unknown key fails here, with a suggestion
    if empty and listed and not any(piece.strip().startswith("[") for piece in pieces):
        raise UserError(
            f"'{text}' has an empty item (item {empty[0] + 1}); separate items with single commas and no trailing comma, e.g. {key}=q_proj,v_proj"
        )
    if empty:
        raise UserError(f"'{text}' has an empty grid value (value {empty[0] + 1}); separate values with single commas, e.g. {key}=1,2")
    if listed:
        bracketed = [piece.strip().startswith("[") for piece in pieces]
        if not any(bracketed):
            return None  # `lora.target_modules=q_proj,v_proj`: one list value
        if not all(bracketed):
            raise UserError(
                f"'{key}' takes a list: to sweep it, bracket every value, e.g. {key}=[q_proj,v_proj],[q_proj,k_proj,v_proj,o_proj] (got '{raw}')"
            )
    return key, [_load(key, piece.strip()) for piece in pieces]


def _method_names() -> list[str]:
    return list(all_methods())


def grid_section(values) -> dict[str, list]:
    """The YAML `grid:` section: `{dotted key: [value, ...]}`, list settings as lists of lists."""
    if not isinstance(values, dict):
        raise UserError("'grid' must map settings to lists of values, e.g. grid: {adamole.max_threshold: [0.0625, 0.125]}")
    checked = {}
    for key, options in values.items():
        key = str(key)
        annotation = setting_type(key)
        if not isinstance(options, list) or not options:
            raise UserError(f"grid: '{key}' must list its values, e.g. {key}: [a, b] (got {options!r})")
        if is_list_type(annotation) and not all(isinstance(o, list) for o in options):
            raise UserError(
                f"grid: '{key}' takes a list, so each grid value is a list, e.g. {key}: [[q_proj, v_proj], [q_proj, k_proj, v_proj, o_proj]]"
            )
        checked[key] = options
    return checked


def value_text(value) -> str:
    """A swept value as the CLI writes it: 0.125, [q_proj,v_proj]."""
    if isinstance(value, list | tuple):
        return "[" + ",".join(value_text(v) for v in value) + "]"
    return json.dumps(value) if value is None or isinstance(value, bool) else str(value)


# --- grid points --------------------------------------------------------------------------------


@dataclass(frozen=True)
class GridPoint:
    values: tuple[tuple[str, object], ...]  # (key, value as the trial's config holds it), in grid order
    config: ExperimentConfig  # this point's config (no grid left in it)


def applies(key: str, method: str, trains: bool) -> bool:
    """Whether a swept setting can change a trial of `method` (base ignores train.*, lora ignores adamole.*)."""
    head = key.partition(".")[0]
    if head == "eval":
        return True
    if head == "train":
        return trains
    return head == method


def _read(config, key: str):
    head, _, name = key.partition(".")
    if head in SECTIONS:
        return getattr(getattr(config, head), name)
    return getattr(make_config(head, config.method_options.get(head)), name)


def grid_points(config) -> list[GridPoint]:
    """The product of the grid's values, each applied to a copy of `config` and validated; one point
    (the config itself) without a grid. An invalid value, a value listed twice, or a swept option of a
    method that is not run fails here, in one line, before any work."""
    if not config.grid:
        return [GridPoint((), config)]
    for key, options in config.grid.items():
        head = key.partition(".")[0]
        if head not in SECTIONS and head not in config.methods:
            raise UserError(f"'{key}' is swept but method '{head}' is not run; add it to --methods or drop '{key}' from the grid")
        texts = [value_text(_read(_apply(config, [(key, option)]), key)) for option in options]
        twice = sorted({t for t in texts if texts.count(t) > 1})
        if twice:
            raise UserError(f"grid '{key}' lists {', '.join(twice)} more than once; name each value once")
    points = []
    for combination in itertools.product(*config.grid.values()):
        point = _apply(config, list(zip(config.grid, combination)))
        points.append(GridPoint(tuple((key, _read(point, key)) for key in config.grid), point))
    return points


def _apply(config, values: list[tuple[str, object]]):
    """A copy of `config` with the grid values set and the sections they touch validated."""

    point = copy.deepcopy(config)
    point.grid = {}
    try:
        for key, value in values:
            set_fields(point, nested(key, value))
        for key, _ in values:
            head = key.partition(".")[0]
            if head in SECTIONS:
                getattr(point, head).validate()
            else:
                make_config(head, point.method_options.get(head))
    except UserError as err:
        where = ", ".join(f"{k}={value_text(v)}" for k, v in values)
        raise UserError(f"grid point {where}: {err}") from None
    return point
