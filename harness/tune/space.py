"""A search space file (configs/tune.yaml; the schema is in docs/tuning.md): per method, the settings
`tune` samples and its budget, plus how the validation split is carved and how trials are pruned.
Everything is checked before any work, each bound through the same validation a grid point gets."""

import copy
import hashlib
import json
from dataclasses import asdict, dataclass

from ...base.errors import UserError
from ...methods.registry import get_method_class
from ..settings.config import ExperimentConfig, read_yaml_mapping, trial_config
from ..settings.grid import applies, grid_points, is_list_type, setting_type

KINDS = ("log_uniform", "uniform", "int", "log_int", "choice")
PRUNERS = ("median", "asha", "none")
TOP_KEYS = ("seed", "validation", "pruner", "report_every", "startup_trials", "budget", "methods")
EXAMPLE = "configs/tune.yaml"


@dataclass(frozen=True)
class Dimension:
    key: str  # a train.<field> or <method>.<option> setting
    kind: str  # one of KINDS
    values: tuple  # (low, high), or the choices

    def sample(self, trial):
        """This dimension's value for an Optuna trial (the parameter is named by the setting)."""
        if self.kind == "choice":
            return trial.suggest_categorical(self.key, list(self.values))
        low, high = self.values
        if self.kind in ("int", "log_int"):
            return trial.suggest_int(self.key, low, high, log=self.kind == "log_int")
        return trial.suggest_float(self.key, low, high, log=self.kind == "log_uniform")

    def text(self) -> str:
        return f"{self.key} ~ {self.kind}({', '.join(map(str, self.values))})"


@dataclass(frozen=True)
class Budget:
    trials: int | None  # search trials that run to the end or are pruned (failed ones do not count); None: no cap
    steps: int | None = None  # optimizer steps over all search trials (pruned ones count what they ran); None: no cap

    def text(self) -> str:
        return ", ".join(
            ([f"{self.trials} trial{'s' * (self.trials != 1)}"] if self.trials else []) + ([f"≤ {self.steps} steps"] if self.steps else [])
        )

    def left(self, held: int, spent: int) -> int | None:
        """Trials still to run (None: as many as the step budget allows), given those held and the steps spent; 0 when spent."""
        if self.steps and spent >= self.steps:
            return 0
        return None if self.trials is None else max(0, self.trials - held)


@dataclass(frozen=True)
class MethodSpace:
    method: str
    dimensions: tuple[Dimension, ...]
    budget: Budget


@dataclass(frozen=True)
class SearchSpace:
    path: str
    methods: dict[str, MethodSpace]
    seed: int = 0  # carves the validation split and seeds the sampler
    validation_fraction: float = 0.2
    validation_max_docs: int | None = 200
    pruner: str = "median"
    report_every: int = 1  # optimizer steps between intermediate validation scores
    startup_trials: int = 2  # trials the median pruner lets finish before it prunes

    def study_name(self, config: ExperimentConfig, method: str) -> str:
        """What decides whether a rerun continues a study: the method's resolved settings on every task, its
        space, the split and the pruning; never the budget (a larger budget continues the same study)."""
        settings = {
            "trials": [trial_config(config, method, task) for task in config.tasks],
            "space": [asdict(d) for d in self.methods[method].dimensions],
            "split": [self.seed, self.validation_fraction, self.validation_max_docs],
            "pruning": [self.pruner, self.report_every, self.startup_trials],
        }
        digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:12]
        return f"{method}-{digest}"


def _fail(path, message: str) -> UserError:
    return UserError(f"search space {path}: {message}")


def _number(path, where: str, value, kind: type, low: float | None = None, optional: bool = False):
    """`value` as `kind` (an integer is a float too), at least `low`; None only where `optional`."""
    if value is None and optional:
        return None
    accepted = (int,) if kind is int else (int, float)
    if isinstance(value, bool) or not isinstance(value, accepted) or (low is not None and value < low):
        wanted = ("an integer" if kind is int else "a number") + (f" >= {low}" if low is not None else "") + (" or null" if optional else "")
        hint = " (YAML reads 1e-5 as text: write 1.0e-5)" if isinstance(value, str) else ""
        raise _fail(path, f"{where} must be {wanted}, got {value!r}{hint}")
    return kind(value)


def _dimension(path, method: str, key: str, spec, config: ExperimentConfig) -> Dimension:
    where = f"methods.{method}.space.{key}"
    try:
        annotation = setting_type(key)
    except UserError as err:
        raise _fail(path, f"{where}: {err}") from None
    trains = get_method_class(method).trains
    if key.startswith("eval.") or not applies(key, method, trains):
        raise _fail(path, f"{where}: {method} trials do not depend on {key}; sample train.<field> or {method}.<option> settings")
    if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in KINDS:
        raise _fail(path, f"{where} must be one of {', '.join(KINDS)}, e.g. {key}: {{log_uniform: [1.0e-5, 1.0e-2]}} or {{choice: [4, 8]}}")
    kind, values = next(iter(spec.items()))
    if not isinstance(values, list) or not values:
        raise _fail(path, f"{where}.{kind} takes a list, e.g. [low, high]")
    if kind == "choice":
        if is_list_type(annotation) or any(not isinstance(v, str | int | float | bool) for v in values):
            raise _fail(path, f"{where}: choices must be single numbers, strings or booleans (Optuna's categorical values)")
        if len({json.dumps(v) for v in values}) < len(values):
            raise _fail(path, f"{where} lists a choice more than once; name each once")
    else:
        integral = kind in ("int", "log_int")
        if len(values) != 2:
            raise _fail(path, f"{where}.{kind} takes [low, high], got {values!r}")
        low, high = (_number(path, f"{where}.{kind} bound", v, int if integral else float) for v in values)
        if not low < high:
            raise _fail(path, f"{where}.{kind} needs low < high, got [{low}, {high}]")
        if kind.startswith("log") and low <= 0:
            raise _fail(path, f"{where}.{kind} needs low > 0 (a log scale), got {low}")
        values = [low, high]
    probe = copy.deepcopy(config)  # every bound or choice is a valid setting, checked as a grid point is
    probe.methods, probe.grid = [method], {key: list(values)}
    try:
        grid_points(probe)
    except UserError as err:
        raise _fail(path, f"{where}: {err}") from None
    return Dimension(key, kind, tuple(values))


def _budget(path, where: str, spec) -> Budget:
    if not isinstance(spec, dict) or not spec or set(spec) - {"trials", "steps"}:
        raise _fail(path, f"{where} must be {{trials: N}}, {{steps: S}} or {{trials: N, steps: S}}, got {spec!r}")
    return Budget(
        _number(path, f"{where}.trials", spec.get("trials"), int, 1, optional="steps" in spec),
        _number(path, f"{where}.steps", spec.get("steps"), int, 1, optional=True),
    )


def load_space(path, config: ExperimentConfig) -> SearchSpace:
    """The search space for `config`'s methods, or one line naming what to fix (exit 2, before any work)."""
    values = read_yaml_mapping(path, "search space", EXAMPLE)
    unknown = sorted(set(values) - set(TOP_KEYS))
    if unknown:
        raise _fail(path, f"unknown key '{unknown[0]}'; valid: {', '.join(TOP_KEYS)} (docs/tuning.md)")
    methods = values.get("methods")
    if not isinstance(methods, dict) or not methods:
        raise _fail(
            path,
            "needs methods: {<method>: {space: {<setting>: {<kind>: [...]}}}}, e.g. methods: {lora: {space: {train.lr: {log_uniform: [1.0e-5, 1.0e-2]}}}}",
        )
    default_budget = _budget(path, "budget", values["budget"]) if "budget" in values else None
    spaces = {}
    for method in config.methods:
        if method not in methods:
            raise _fail(path, f"has no space for method '{method}'; add methods.{method}.space, or leave {method} out of --methods")
        section = methods[method] or {}
        if not get_method_class(method).trains:
            raise _fail(path, f"method '{method}' does not train, so it has nothing to tune; leave it out of --methods")
        if not isinstance(section, dict) or not isinstance(section.get("space"), dict) or not section["space"] or set(section) - {"space", "budget"}:
            raise _fail(path, f"methods.{method} must be {{space: {{<setting>: {{<kind>: [...]}}}}, budget: {{trials: N}}}} (budget optional)")
        if "budget" not in section and default_budget is None:
            raise _fail(path, f"no budget for method '{method}'; add budget: {{trials: N}} at the top (every method's) or under methods.{method}")
        budget = _budget(path, f"methods.{method}.budget", section["budget"]) if "budget" in section else default_budget
        dimensions = tuple(_dimension(path, method, str(key), spec, config) for key, spec in section["space"].items())
        spaces[method] = MethodSpace(method, dimensions, budget)
    validation = values.get("validation") or {}
    if not isinstance(validation, dict) or set(validation) - {"fraction", "max_docs"}:
        raise _fail(path, f"validation must be {{fraction: F, max_docs: N}}, got {validation!r}")
    fraction = _number(path, "validation.fraction", validation.get("fraction", 0.2), float, 0.0)
    if not 0 < fraction < 1:
        raise _fail(path, f"validation.fraction must be between 0 and 1 (the share of the train split held out), got {fraction}")
    pruner = values.get("pruner", "median")
    if pruner not in PRUNERS:
        raise _fail(path, f"pruner must be one of {', '.join(PRUNERS)}, got {pruner!r}")
    steps = config.train.max_steps
    if "report_every" not in values and not steps:
        raise _fail(path, "train.max_steps=0 (epochs) leaves the steps unknown: set report_every (steps between validation scores)")
    return SearchSpace(
        path=str(path),
        methods=spaces,
        seed=_number(path, "seed", values.get("seed", 0), int, 0),
        validation_fraction=fraction,
        validation_max_docs=_number(path, "validation.max_docs", validation.get("max_docs", 200), int, 1, optional=True),
        pruner=pruner,
        report_every=_number(path, "report_every", values.get("report_every", max(1, steps // 3)), int, 1),
        startup_trials=_number(path, "startup_trials", values.get("startup_trials", 2), int, 0),
    )
