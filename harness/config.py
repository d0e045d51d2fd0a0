"""Experiment settings: dataclass defaults ← YAML file ← CLI `key=value` overrides, then validated.

The defaults are a CPU budget sized for the embedded SmolLM2 model; `configs/*.yaml` hold the
papers' recipes (e.g. configs/adamole-reference.yaml for Llama-2-7B).
"""

import dataclasses
import hashlib
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml

from .errors import UserError, unknown
from .models import DEFAULT_MODEL, check_model_name, resolve_device
from .precision import Precision, resolve_precision

SCHEMA_VERSION = 1  # bump when a change makes old results incomparable (part of every run's hash)


@dataclass
class TrainConfig:
    max_steps: int = 40  # optimizer steps; 0 means "run `epochs` over the train split"
    epochs: float = 1.0
    batch_size: int = 8
    grad_accum: int = 1
    lr: float = 5e-4
    lr_schedule: Literal["constant_with_warmup", "linear", "cosine"] = "constant_with_warmup"
    warmup_steps: int = 4
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    max_length: int = 256
    loss_on: Literal["answer", "full"] = "answer"  # the AdaMoLE reference trains on the full sequence
    max_train_examples: int | None = None
    group_by_length: bool = True  # batch similar lengths together, as the reference's HF Trainer does (less padding)

    def validate(self) -> None:
        _positive(self, "batch_size", "grad_accum", "lr", "max_length")
        if self.max_steps < 0 or self.warmup_steps < 0 or self.epochs <= 0:
            raise UserError("train.max_steps and train.warmup_steps must be >= 0 and train.epochs > 0")


@dataclass
class EvalConfig:
    protocol: Literal["letter", "cloze", "generate"] = "letter"  # see docs/tasks.md
    batch_size: int = 16
    # First N eval docs (lm-eval's --limit). 200 keeps a CPU run in minutes (full BoolQ eval on
    # SmolLM2 is ~45 min here); set eval.limit=null to score whole splits, as the paper configs do.
    limit: int | None = 200
    # Per-expert usage, routing entropy and threshold statistics of mixtures, logged to MLflow.
    # Costs a little eval time (docs/performance.md); it records more, it never changes a result,
    # so it is left out of the config hash.
    expert_stats: bool = True

    def validate(self) -> None:
        _positive(self, "batch_size")
        if self.limit is not None and self.limit < 1:
            raise UserError("eval.limit must be >= 1 (or unset for the whole eval split)")


@dataclass
class ExperimentConfig:
    model: str = DEFAULT_MODEL
    # auto: bf16 for the embedded SmolLM2 where the hardware has fast bf16, else fp32 (harness/precision.py)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    device: str = "auto"
    trust_remote_code: bool = False
    methods: list[str] = field(default_factory=lambda: ["lora"])
    tasks: list[str] = field(default_factory=lambda: ["copa"])
    seeds: list[int] = field(default_factory=lambda: [0])
    method_options: dict[str, dict] = field(default_factory=dict)  # e.g. {"adamole": {"num_experts": 8}}
    data_dir: str | None = None
    mix: bool = False  # train one adapter per (method, seed) on the union of all tasks, evaluate on each
    experiment: str = "adamole-bench"  # MLflow experiment name
    save_adapters: bool = True  # log each trained adapter as an MLflow artifact
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def validate(self) -> None:
        from ..methods.registry import make_config
        from ..tasks.registry import get_task

        for method in self.methods:
            make_config(method, self.method_options.get(method))
        for name in self.method_options:
            if name not in self.methods:
                from ..methods.registry import get_method_class

                get_method_class(name)
        for task in self.tasks:
            get_task(task)
        check_model_name(self.model)
        self.resolved_precision()  # e.g. fp16 on a CPU fails here, before any work
        if not self.methods or not self.tasks or not self.seeds:
            raise UserError("methods, tasks and seeds must each name at least one entry")
        self.train.validate()
        self.eval.validate()

    def resolved_precision(self) -> Precision:
        return resolve_precision(self.precision, resolve_device(self.device), self.model)


def _positive(section, *names: str) -> None:
    for name in names:
        if getattr(section, name) <= 0:
            raise UserError(f"{type(section).__name__.removesuffix('Config').lower()}.{name} must be > 0")


# --- building from YAML + overrides -------------------------------------------------------------


def _set_fields(obj, values: dict, prefix: str = "") -> None:
    from ..methods.registry import coerce

    hints = typing.get_type_hints(type(obj))
    names = {f.name for f in dataclasses.fields(obj)}
    for key, value in values.items():
        if prefix == "" and key == "dtype":
            raise UserError("the 'dtype' setting was replaced by 'precision' (auto, fp32, bf16 or fp16): set precision: bf16, or --precision bf16")
        if key not in names:
            raise unknown("setting", prefix + key, [prefix + n for n in names])
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise UserError(f"'{prefix}{key}' is a section; set its fields, e.g. {prefix}{key}.<name>=...")
            _set_fields(current, value, f"{prefix}{key}.")
        elif key == "method_options":
            for method, options in value.items():
                current.setdefault(method, {}).update(options or {})
        else:
            setattr(obj, key, coerce(value, hints[key], prefix + key))


def parse_override(text: str) -> dict:
    """`train.lr=1e-4` → {"train": {"lr": 1e-4}}; `adamole.num_experts=4` → method options."""
    if "=" not in text:
        raise UserError(f"override '{text}' is not key=value (e.g. train.lr=1e-4 or adamole.num_experts=4)")
    key, raw = text.split("=", 1)
    value = yaml.safe_load(raw) if raw else None
    parts = key.strip().split(".")
    from ..methods.registry import all_methods

    if parts[0] in all_methods() and len(parts) == 2:
        return {"method_options": {parts[0]: {parts[1]: value}}}
    nested: dict = value
    for part in reversed(parts):
        nested = {part: nested}
    return nested


def read_yaml_mapping(path: str | Path, kind: str, example: str = "") -> dict:
    """A YAML file that must hold a mapping, with one-line errors for missing/invalid files."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{kind} {path} not found{f' (e.g. {example})' if example else ''}")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise UserError(f"{kind} {path} is not valid YAML: {str(err).splitlines()[0]}") from None
    if not isinstance(values, dict):
        raise UserError(f"{kind} {path} must be a mapping of settings")
    return values


def load_config(path: str | Path | None = None, overrides: list[str] = (), **cli: object) -> ExperimentConfig:
    """Defaults, then the YAML file, then CLI flags (`cli`, None = not given), then key=value overrides."""
    config = ExperimentConfig()
    if path:
        _set_fields(config, read_yaml_mapping(path, "config file"))
    flags = {k: v for k, v in cli.items() if v is not None}
    for dotted, value in flags.items():
        section, _, name = dotted.rpartition("__")
        _set_fields(config, {section: {name: value}} if section else {name: value})
    for text in overrides:
        _set_fields(config, parse_override(text))
    config.validate()
    return config


# --- the identity of one trial ------------------------------------------------------------------


def trial_config(config: ExperimentConfig, method: str, task: str) -> dict:
    """Everything that determines one (method, task) result except the seed, fully resolved."""
    from ..methods.registry import make_config

    method_config = make_config(method, config.method_options.get(method))
    return {
        "schema": SCHEMA_VERSION,
        "model": config.model,
        "precision": config.resolved_precision().name,  # what ran, never "auto"
        "method": method,
        "method_config": dataclasses.asdict(method_config),
        "task": task,
        "data_dir": config.data_dir,
        "train": dataclasses.asdict(config.train),
        "eval": {k: v for k, v in dataclasses.asdict(config.eval).items() if k != "expert_stats"},
    }


def config_hash(resolved: dict) -> str:
    return hashlib.sha256(json.dumps(resolved, sort_keys=True, default=str).encode()).hexdigest()[:12]


def to_dict(config: ExperimentConfig) -> dict:
    return dataclasses.asdict(config)
