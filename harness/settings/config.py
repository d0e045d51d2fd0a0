"""Experiment settings: dataclass defaults ← YAML file ← CLI `key=value` overrides, then validated.

The defaults are a CPU budget sized for the embedded SmolLM2 model; `configs/*.yaml` hold the
papers' recipes (e.g. configs/adamole-reference.yaml for Llama-2-7B).
"""

import dataclasses
import difflib
import hashlib
import json
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml

from ...base.errors import UserError
from ...methods.registry import all_methods, coerce, get_method_class, make_config
from ...tasks.registry import get_task
from ..model.loading import DEFAULT_MODEL, check_model_name, resolve_device
from ..model.precision import Precision, resolve_precision

CHECKPOINT_SETTINGS = ("checkpoint_every", "checkpoint_dir", "keep_checkpoints")  # when and where to save, never what is computed
# Train settings that change how a number is computed, never the number: recorded with the run, left out of the hash.
UNHASHED_TRAIN_SETTINGS = (*CHECKPOINT_SETTINGS, "gradient_checkpointing")
SCHEMA_VERSION = 1  # bump only when the store's layout changes; code changes are in harness/store/fingerprint.py


@dataclass
class TrainConfig:
    # Optimizer steps; 0 means "run `epochs` over the train split". 10 keeps the default two-method,
    # two-task run near 10 min on a 2-core CPU: up to 100 steps it learns no more than the label
    # prior on BoolQ there (docs/budget.md). Paper configs set their own.
    max_steps: int = 10
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
    # Whose length-grouped order: ours (data.LengthGroupedBatches) or HF Trainer's LengthGroupedSampler,
    # the reference's (batches sorted longest first within mega-batches of ~50 optimizer steps).
    length_grouping: Literal["ours", "hf"] = "ours"
    # Data steps. Ours: pad on the right with the tokenizer's pad token, supervise EOS, truncate the
    # prompt's start. The reference's (configs/adamole-reference.yaml, docs/reproducibility.md): pad on
    # the left with EOS to a multiple of 8, EOS unsupervised, truncate the end (the answer first).
    padding_side: Literal["right", "left"] = "right"
    pad_token: Literal["tokenizer", "eos"] = "tokenizer"
    pad_to_multiple_of: int | None = None
    supervise_eos: bool = True
    truncation_side: Literal["left", "right"] = "left"
    # Step checkpoints (harness/train/checkpoint.py): every N optimizer steps, at the last step and on
    # SIGTERM/SIGUSR1, so a killed trial resumes where it stopped; 0 turns them off. Where: a folder on
    # shared disk, or `checkpoints/` beside the local store. Deleted once the trial is FINISHED unless kept.
    # They change when a number is computed, never the number: left out of the config hash (CHECKPOINT_SETTINGS).
    checkpoint_every: int = 50
    checkpoint_dir: str | None = None
    keep_checkpoints: bool = False
    # Recompute each decoder layer's activations in backward instead of keeping them: less memory
    # (`adamole-bench plan` shows how much), about one more forward of time. The same numbers bitwise
    # (tests/test_checkpointing.py), so it is recorded with the run but left out of the config hash.
    # On by default: the default run peaked at 6.9 GB resident without it, 2.1x its live tensors once the
    # allocator had churned through BoolQ's 8 x 256 activations, and ~3.3 GB with it (docs/budget.md).
    gradient_checkpointing: bool = True

    def validate(self) -> None:
        _finite(self)
        _positive(self, "batch_size", "grad_accum", "lr", "epochs", "max_grad_norm")
        if self.max_length < 2:  # 1 keeps only EOS: no token is supervised, the loss is nan and the trial fails as diverged
            raise UserError(
                f"train.max_length must be >= 2 (a token to predict from and one to predict), got {self.max_length}; e.g. train.max_length=256"
            )
        _non_negative(self, "max_steps", "warmup_steps", "weight_decay", "checkpoint_every")
        if self.checkpoint_dir is not None and not str(self.checkpoint_dir).strip():
            raise UserError(
                "train.checkpoint_dir is empty (an unset shell variable?); name a folder, or leave it out for checkpoints/ beside the store"
            )
        _positive_or_unset(self, "max_train_examples", "every example of the train split")
        _positive_or_unset(self, "pad_to_multiple_of", "the batch's longest example")
        if self.truncation_side == "right" and self.loss_on == "answer":  # a batch of cut answers has no loss: nan, a failed trial
            raise UserError(
                "train.truncation_side=right cuts the answers of over-long examples, which train.loss_on=answer then cannot learn from; "
                "use train.loss_on=full (as the reference) or train.truncation_side=left"
            )


@dataclass
class EvalConfig:
    protocol: Literal["letter", "cloze", "generate", "reference_logits", "reference_generate"] = "letter"  # see docs/tasks.md
    # Docs per forward. lm-eval pads a batch to its longest doc: on BoolQ's long-tailed passages 8
    # scores 500 docs 1.17x faster than 16 here (SmolLM2, bf16: 86 s against 101 s; 4: 89 s).
    batch_size: int = 8
    # First N eval docs (lm-eval's --limit). 500 gives a 95% CI of about ±4.3 points, the least that
    # tells a method from the majority class (docs/budget.md); whole BoolQ on SmolLM2 is ~14 min a
    # model on a 2-core CPU. eval.limit=null scores whole splits, as the paper configs do.
    limit: int | None = 500
    # Per-expert usage, routing entropy and threshold statistics of mixtures, logged to MLflow.
    # Costs a little eval time (docs/performance.md); it records more, it never changes a result,
    # so it is left out of the config hash.
    expert_stats: bool = True

    def validate(self) -> None:
        _positive(self, "batch_size")
        _positive_or_unset(self, "limit", "the whole eval split")


@dataclass
class ResourcesConfig:
    """What each Ray task asks the cluster for (`--executor ray`; the local executor ignores it)."""

    gpus_per_trial: float = 0.0  # fractions share a GPU, e.g. 0.5
    cpus_per_trial: float = 1.0
    # Ray workers that train one trial together as a torch.distributed process group (gloo on CPU, NCCL on GPU), each
    # with cpus_per_trial CPUs and gpus_per_trial GPUs and train.batch_size examples of every global batch, as under torchrun
    workers_per_trial: int = 1
    max_retries: int = 2  # reruns of a trial whose worker died (the trial is still recorded once)
    custom: dict[str, float] = field(default_factory=dict)  # Ray custom resources per trial (`ray start --resources`), e.g. {ssd: 1}
    accelerator_type: str | None = None  # only nodes with this GPU type (Ray's accelerator types, e.g. A100, H100)

    def validate(self) -> None:
        _finite(self)
        _positive(self, "cpus_per_trial", "workers_per_trial")
        _non_negative(self, "gpus_per_trial", "max_retries")
        if self.workers_per_trial > 1 and self.gpus_per_trial % 1:
            raise UserError(f"resources.workers_per_trial={self.workers_per_trial} with resources.gpus_per_trial={self.gpus_per_trial:g}: NCCL needs "
                            "a whole GPU per worker, so two workers of a trial must not share one; use resources.gpus_per_trial=1 (or 0 on CPUs)")  # fmt: skip
        for name, amount in self.custom.items():
            if not name.strip() or name in ("CPU", "GPU", "memory") or not math.isfinite(amount) or amount <= 0:
                raise UserError(f"resources.custom.{name}={amount}: a custom resource needs a name other than CPU, GPU and memory "
                                "and an amount > 0, e.g. resources.custom.ssd=1 (use resources.cpus_per_trial / gpus_per_trial for those)")  # fmt: skip
        if self.accelerator_type is not None and (not self.accelerator_type.strip() or not self.gpus_per_trial):
            raise UserError(f"resources.accelerator_type={self.accelerator_type!r} picks a GPU type, so it needs resources.gpus_per_trial > 0 "
                            "and a type Ray knows, e.g. resources.gpus_per_trial=1 resources.accelerator_type=A100")  # fmt: skip


@dataclass
class ExperimentConfig:
    model: str = DEFAULT_MODEL
    # auto: bf16 for the embedded SmolLM2 where the hardware has fast bf16, else fp32 (harness/model/precision.py)
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
    reference: bool = True  # also evaluate the zero-shot `base` model per task (once, reused) when methods lack it
    grid: dict[str, list] = field(default_factory=dict)  # swept settings, e.g. {"adamole.num_experts": [4, 8]} (harness/settings/grid.py)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)

    def validate(self) -> None:
        if not self.methods or not self.tasks or not self.seeds:
            raise UserError("methods, tasks and seeds must each name at least one entry")
        _check_seeds(self.seeds)
        if not self.experiment.strip():
            raise UserError("experiment (the MLflow experiment name) is empty; name one, e.g. experiment=adamole-bench, or leave it out")
        for name in ("methods", "tasks", "seeds"):
            values = getattr(self, name)
            twice = sorted({str(v) for v in values if values.count(v) > 1})
            if twice:
                raise UserError(f"{name} lists {', '.join(twice)} more than once; name each once")
        for method in dict.fromkeys([*self.methods, *self.method_options]):  # options of methods not run are checked too
            checked = make_config(method, self.method_options.get(method))
            if method in self.method_options:  # typed, as the hash sees them: YAML 1.1 reads `alpha: 1e1` as a string
                self.method_options[method] = {key: getattr(checked, key) for key in self.method_options[method]}
        for task in self.tasks:
            get_task(task)
        if not self.model.strip():
            raise UserError(f"model is empty; name one, e.g. model={DEFAULT_MODEL} (see `adamole-bench list models`), or leave it out")
        check_search_value(self.model, "model")
        check_model_name(self.model)
        resolve_device(self.device)
        self.resolved_precision()  # e.g. fp16 on a CPU fails here, before any work
        if self.data_dir is not None:
            folder = Path(self.data_dir).expanduser()
            if not str(self.data_dir).strip():
                raise UserError("data_dir (--data-dir) is empty (an unset shell variable?); pass a folder or leave it out")
            if not folder.is_dir():
                why = "is a file, not a folder" if folder.exists() else "does not exist"
                raise UserError(
                    f"--data-dir {self.data_dir} {why}; pass the folder holding <task>/train.jsonl and <task>/validation.jsonl (docs/tasks.md)"
                )
        self.train.validate()
        self.eval.validate()
        self.resources.validate()

    def resolved_precision(self) -> Precision:
        return resolve_precision(self.precision, resolve_device(self.device), self.model)


# --- range checks: what the optimizer, the RNGs or a DataLoader would reject inside a trial ---------

SEED_MAX = 2**32 - 1  # numpy.random.seed takes 0 ..= 2**32 - 1 (torch and random take more)


def _setting(section, name: str) -> str:
    return f"{type(section).__name__.removesuffix('Config').lower()}.{name}"


def _example_of(section, name: str) -> str:
    """A valid value for the fix: the field's default, or 1 where the default is unset."""
    default = getattr(type(section)(), name)
    return "1" if default is None else str(default)


def _finite(section) -> None:
    """No float setting may be nan or ±inf (YAML reads nan, .nan, inf and .inf as numbers)."""
    for f in dataclasses.fields(section):
        value = getattr(section, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            name = _setting(section, f.name)
            raise UserError(f"{name} must be a finite number, got {value}; e.g. {name}={_example_of(section, f.name)}")


def _positive(section, *names: str) -> None:
    for name in names:
        value = getattr(section, name)
        if value <= 0:
            setting = _setting(section, name)
            raise UserError(f"{setting} must be > 0, got {value}; e.g. {setting}={_example_of(section, name)}")


def _non_negative(section, *names: str) -> None:
    for name in names:
        value = getattr(section, name)
        if value < 0:
            setting = _setting(section, name)
            raise UserError(f"{setting} must be >= 0, got {value}; e.g. {setting}={_example_of(section, name)}")


def _positive_or_unset(section, name: str, unset_means: str) -> None:
    value = getattr(section, name)
    if value is not None and value < 1:
        setting = _setting(section, name)
        raise UserError(
            f"{setting} must be >= 1 (or unset for {unset_means}), got {value}; e.g. {setting}={_example_of(section, name)} or {setting}=null"
        )


def _check_seeds(seeds: list) -> None:
    for seed in seeds:
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise UserError(f"seeds takes integers, got {seed!r}; e.g. --seeds 0,1,2")
        if not 0 <= seed <= SEED_MAX:
            raise UserError(f"seed {seed} is out of range: seeds must be in [0, {SEED_MAX}] (what numpy's RNG accepts); e.g. --seeds 0,1,2")


def check_experiment_name(name: str, flag: str = "--experiment") -> None:
    """MLflow refuses an empty experiment name with a traceback, and only when the store is opened."""
    if not name.strip():
        raise UserError(f"{flag} is empty (an unset shell variable?); name the MLflow experiment, e.g. {flag} adamole-bench, or leave the flag out")


def check_search_value(value: str, what: str) -> None:
    """A value the MLflow store is searched by (`tags.model = '...'`): MLflow's filter syntax has no escape
    for the quote that delimits a string, so a value holding one is refused here, in one line, instead of
    breaking the query (or matching other runs). Wildcards need nothing: only `=` is used, never LIKE."""
    if "'" in value:
        raise UserError(
            f"{what} {value!r} contains a single quote ('), which MLflow run searches cannot match; "
            "use a name without quotes (for a local folder, a symlink to it)"
        )


# --- names users bring from PEFT and HF TrainingArguments -----------------------------------------

# Read as ours: the value lands in our field, so the config hash is the same whichever name was used.
# HF's TrainingArguments are flat, so at the top level its names reach their section too
# (`learning_rate: 1e-4` is train.lr).
SECTION_ALIASES = {
    "train": {
        "learning_rate": "lr",
        "per_device_train_batch_size": "batch_size",
        "gradient_accumulation_steps": "grad_accum",
        "num_train_epochs": "epochs",
        "lr_scheduler_type": "lr_schedule",
    },
    "eval": {"per_device_eval_batch_size": "batch_size"},
}
METHOD_ALIASES = {"r": "rank", "lora_alpha": "alpha", "lora_dropout": "dropout"}  # PEFT's LoraConfig


def _alias(prefix: str, key: str) -> tuple[str, str] | None:
    """(section relative to the object being set, our field name) for an alias, else None."""
    section = prefix.rstrip(".")
    if key in SECTION_ALIASES.get(section, {}):
        return "", SECTION_ALIASES[section][key]
    if not prefix:
        return next(((name, aliases[key]) for name, aliases in SECTION_ALIASES.items() if key in aliases), None)
    return None


def method_options(method: str, options: dict) -> dict:
    """A method's options under our names (`lora.r` → rank, `lora_alpha` → alpha, where the method has
    that option); a training setting written as an option (`lora.learning_rate`) is named right."""

    fields = {f.name for f in dataclasses.fields(get_method_class(method).config_class)}
    named: dict[str, object] = {}
    given_as: dict[str, str] = {}
    for key, value in options.items():
        ours = METHOD_ALIASES.get(key, key) if key not in fields and METHOD_ALIASES.get(key) in fields else key
        setting = _setting_named(key)
        if ours not in fields and setting:
            raise UserError(f"'{method}.{key}' is not a {method} option but a run setting: use {setting}=..., e.g. {setting}={_example(setting)}")
        if ours in named:
            raise UserError(f"'{method}.{given_as[ours]}' and '{method}.{key}' both set {method}.{ours}; keep one")
        named[ours], given_as[ours] = value, key
    return named


def _setting_named(key: str) -> str | None:
    """The dotted train/eval setting a bare name means (ours or an alias), if exactly one."""
    found = [
        f"{section}.{key}" for section, cls in (("train", TrainConfig), ("eval", EvalConfig)) if key in {f.name for f in dataclasses.fields(cls)}
    ]
    found += [f"{section}.{aliases[key]}" for section, aliases in SECTION_ALIASES.items() if key in aliases]
    return found[0] if len(found) == 1 else None


def _example(setting: str) -> str:
    section, _, name = setting.partition(".")
    return str(getattr({"train": TrainConfig, "eval": EvalConfig}[section](), name))


def all_settings() -> list[str]:
    """Every dotted setting name of an ExperimentConfig."""
    config, names = ExperimentConfig(), []
    for f in dataclasses.fields(config):
        section = getattr(config, f.name)
        names += [f"{f.name}.{sub.name}" for sub in dataclasses.fields(section)] if dataclasses.is_dataclass(section) else [f.name]
    return names


def _unknown_setting(prefix: str, key: str, names: list[str]) -> UserError:
    """`unknown setting 'train.learnin_rate' (did you mean 'train.lr'?); valid: ...`: a suggestion from,
    in order, PEFT's option names, the same name in another section (`eval.lr` → train.lr, `lr` →
    train.lr), an alias there, then spelling, compared on the last part only (a shared `train.` prefix
    made `train.learning_rate` look like `train.max_length`)."""
    wanted = prefix + key
    valid = sorted(prefix + n for n in names)
    if key in METHOD_ALIASES or key in METHOD_ALIASES.values():
        option = METHOD_ALIASES.get(key, key)
        example = {"rank": 8, "alpha": 16, "dropout": 0.1}[option]
        return UserError(
            f"unknown setting '{wanted}': {key} is a method option here, <method>.{option}, e.g. lora.{option}={example}; valid settings: {', '.join(valid)}"
        )
    everywhere = [n for n in all_settings() if n != wanted]
    same = [n for n in everywhere if n.rpartition(".")[2] == key] or [s for s in [_setting_named(key)] if s and s != wanted]
    if not same:  # a misspelling of one of this section's names or aliases
        section = prefix.rstrip(".")
        # At the top level every section's alias is valid as written (`learning_rate=`), so it is a spelling to suggest.
        aliases = SECTION_ALIASES.get(section, {}) if section else {alias: alias for table in SECTION_ALIASES.values() for alias in table}
        spelled = {n: n for n in names} | aliases
        close = difflib.get_close_matches(key, list(spelled), n=1, cutoff=0.6)
        same = [prefix + spelled[close[0]]] if close else []
    if not same:
        by_last = {n.rpartition(".")[2]: n for n in everywhere}
        same = [by_last[c] for c in difflib.get_close_matches(key, list(by_last), n=1, cutoff=0.6)]
    suggestion = f" (did you mean {' or '.join(repr(n) for n in same)}?)" if same else ""
    return UserError(f"unknown setting '{wanted}'{suggestion}; valid: {', '.join(valid)}")


# --- building from YAML + overrides -------------------------------------------------------------


def set_fields(obj, values: dict, prefix: str = "") -> None:
    hints = typing.get_type_hints(type(obj))
    names = {f.name for f in dataclasses.fields(obj)}
    for key, value in values.items():
        if prefix == "" and key == "dtype":
            raise UserError("the 'dtype' setting was replaced by 'precision' (auto, fp32, bf16 or fp16): set precision: bf16, or --precision bf16")
        if key not in names:
            if not prefix and key in all_methods():  # `lora: {rank: 8}`, as lora.rank=8 on the command line
                if not isinstance(value, dict):
                    raise UserError(f"'{key}' takes {key}'s options as a mapping, e.g. {key}: {{rank: 8}} (or {key}.rank=8 on the command line)")
                set_fields(obj, {"method_options": {key: value}})
                continue
            target = _alias(prefix, key)
            if target is None:
                raise _unknown_setting(prefix, key, sorted(names))
            section, ours = target
            given = values.get(section) if section else values
            if isinstance(given, dict) and ours in given:
                raise UserError(f"'{prefix}{key}' and '{prefix}{section + '.' if section else ''}{ours}' set the same setting; keep one")
            set_fields(getattr(obj, section) if section else obj, {ours: value}, f"{prefix}{section}." if section else prefix)
            continue
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise UserError(f"'{prefix}{key}' is a section; set its fields, e.g. {prefix}{key}.<name>=...")
            set_fields(current, value, f"{prefix}{key}.")
        elif key == "method_options":
            if not isinstance(value, dict) or not all(isinstance(o, dict | None) for o in value.values()):
                raise UserError(f"'{prefix}{key}' must map each method to its options, e.g. method_options: {{lora: {{rank: 8}}}} (or lora.rank=8)")
            for method, options in value.items():
                current.setdefault(method, {}).update(method_options(method, options or {}))
        else:
            if value is None and type(None) not in typing.get_args(hints[key]):
                default = getattr(type(obj)(), key)
                raise UserError(
                    f"'{prefix}{key}' needs a value (got none, e.g. '{prefix}{key}=' with nothing after it); e.g. {prefix}{key}={_value_text(default)}, or leave it out"
                )
            try:
                setattr(obj, key, coerce(value, hints[key], prefix + key))
            except TypeError:  # e.g. a number where a list belongs
                raise UserError(f"invalid value {value!r} for '{prefix}{key}': expected {_type_name(hints[key])}") from None


def _value_text(value) -> str:
    return ",".join(map(str, value)) if isinstance(value, list) else str(value).lower() if isinstance(value, bool) else str(value)


def _type_name(annotation) -> str:
    origin = typing.get_origin(annotation)
    if origin in (list, tuple):
        return "a list, e.g. [a, b] or a,b"
    return getattr(annotation, "__name__", str(annotation))


def parse_override(text: str) -> dict:
    """`train.lr=1e-4` → {"train": {"lr": 1e-4}}; `adamole.num_experts=4` → method options."""
    if "=" not in text:
        raise UserError(f"override '{text}' is not key=value (e.g. train.lr=1e-4 or adamole.num_experts=4)")
    key, raw = text.split("=", 1)
    return nested(key, yaml.safe_load(raw) if raw else None)


def nested(key: str, value) -> dict:
    """`train.lr`, 1e-4 → {"train": {"lr": 1e-4}}; `adamole.num_experts`, 4 → method options."""
    parts = key.strip().split(".")

    if parts[0] in all_methods() and len(parts) == 2:
        return {"method_options": {parts[0]: method_options(parts[0], {parts[1]: value})}}
    for part in reversed(parts):
        value = {part: value}
    return value


def read_yaml_mapping(path: str | Path, kind: str, example: str = "") -> dict:
    """A YAML file that must hold a mapping, with one-line errors for missing/invalid files."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{kind} {path} not found{f' (e.g. {example})' if example else ''}")
    if path.is_dir():
        raise UserError(f"{kind} {path} is a folder; pass a YAML file{f', e.g. {example}' if example else ''}")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise UserError(f"{kind} {path} is not valid YAML: {' '.join(str(err).split())}") from None
    except UnicodeDecodeError as err:
        raise UserError(f"{kind} {path} is not UTF-8 text (byte {err.start}); save it as UTF-8 YAML") from None
    except OSError as err:
        raise UserError(f"{kind} {path} cannot be read ({err.strerror})") from None
    if not isinstance(values, dict):
        raise UserError(f"{kind} {path} must be a mapping of settings")
    return values


# --- the identity of one trial ------------------------------------------------------------------


def trial_config(config: ExperimentConfig, method: str, task: str) -> dict:
    """Everything that determines one (method, task) result except the seed, fully resolved."""

    method_config = make_config(method, config.method_options.get(method))
    return {
        "schema": SCHEMA_VERSION,
        "model": config.model,
        "precision": config.resolved_precision().name,  # what ran, never "auto"
        "method": method,
        "method_config": dataclasses.asdict(method_config),
        "task": task,
        "data_dir": config.data_dir,
        "train": {k: v for k, v in dataclasses.asdict(config.train).items() if k not in UNHASHED_TRAIN_SETTINGS},
        "eval": {k: v for k, v in dataclasses.asdict(config.eval).items() if k != "expert_stats"},
    }


def config_hash(resolved: dict) -> str:
    return hashlib.sha256(json.dumps(resolved, sort_keys=True, default=str).encode()).hexdigest()[:12]


def to_dict(config: ExperimentConfig) -> dict:
    return dataclasses.asdict(config)
