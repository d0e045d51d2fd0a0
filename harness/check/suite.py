"""Suite files: the recorded results `check` compares with (YAML, reviewed like code).

A suite names an experiment config to rerun and holds one record per (model, method, task, protocol,
config hash) and CPU class (base/machine.py): the per-seed accuracies, their mean, a tolerance and the
mean training loss. fp32 reruns are exact within a CPU class, not across classes, so `record` writes
this CPU's records and keeps the other classes'.
"""

import math
import os
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ...base.errors import UserError
from ...base.machine import numerics_class
from ..settings.config import ExperimentConfig, read_yaml_mapping
from ..settings.load import load_config
from ..store.provenance import code_version, package_versions

DEFAULT_TOLERANCE = 0.03  # accuracy points as a fraction; CPU reruns are exact within a class, this absorbs other hardware
# Relative change of the mean training loss that counts as drift. Accuracy saturates on easy suites
# (a broken router can still reach 100%); the loss curve of a deterministic CPU rerun does not.
DEFAULT_LOSS_TOLERANCE = 0.05
KEY_FIELDS = ("model", "method", "task", "protocol", "config_hash")
UNRECORDED_CPU = "an unrecorded CPU"  # records written before the CPU class was kept
HEADER = """\
# Recorded results for `adamole-bench check` (docs/reproducibility.md, "Recorded results").
# config: experiment YAML the suite reruns (path relative to this file); overrides: key=value on top.
# torch_threads: CPU threads during the rerun (float reductions depend on it, so it is part of the protocol).
# records: one per (model, method, task, protocol, config_hash); values are per-seed accuracies (fractions),
#   mean is their mean, tolerance the largest allowed drop of the rerun's mean below it; train_loss is the
#   mean training loss per seed, and a relative change beyond loss_tolerance fails as "drifted"; cpu is
#   the CPU class the record was made on (one set of records per class: fp32 reruns are exact within one).
# Written by `adamole-bench check --suite FILE --record`; review the diff before committing.
"""


@dataclass
class Suite:
    path: Path
    config_path: Path
    overrides: list[str] = field(default_factory=list)
    torch_threads: int | None = 1
    default_tolerance: float = DEFAULT_TOLERANCE
    loss_tolerance: float = DEFAULT_LOSS_TOLERANCE
    records: list[dict] = field(default_factory=list)
    recorded: dict = field(default_factory=dict)  # per CPU class: when, from which commit and package versions

    def experiment(self) -> ExperimentConfig:
        return load_config(self.config_path, self.overrides)


def load_suite(path: str | Path) -> Suite:
    path = Path(path)
    document = read_yaml_mapping(path, "suite file", "results/ci-smoke.yaml")
    if "config" not in document:
        raise UserError(f"suite file {path} must name the experiment config to rerun (config: ../configs/smoke.yaml)")
    records = document.get("records") or []
    for number, record in enumerate(records, start=1):
        missing = set(KEY_FIELDS + ("seeds", "values", "mean")) - set(record)
        if missing:
            raise UserError(f"{path} record {number} lacks {', '.join(sorted(missing))}")
        _tolerance(record.get("tolerance", DEFAULT_TOLERANCE), f"{path} record {number}: tolerance")
    threads = document.get("torch_threads", 1)
    if threads is not None and (not isinstance(threads, int) or isinstance(threads, bool) or threads < 1):
        raise UserError(f"{path}: torch_threads must be a whole number >= 1 (or null for torch's default), got {threads!r}; e.g. torch_threads: 1")
    return Suite(
        path=path,
        config_path=(path.parent / document["config"]).resolve(),
        overrides=list(document.get("overrides") or []),
        torch_threads=threads,
        default_tolerance=_tolerance(document.get("default_tolerance", DEFAULT_TOLERANCE), f"{path}: default_tolerance"),
        loss_tolerance=_tolerance(document.get("loss_tolerance", DEFAULT_LOSS_TOLERANCE), f"{path}: loss_tolerance"),
        records=records,
        recorded=_by_cpu(document.get("recorded") or {}),
    )


def _by_cpu(recorded: dict) -> dict:
    """`recorded` per CPU class; a suite written before classes were kept has one block for all."""
    return {UNRECORDED_CPU: recorded} if "at" in recorded else recorded


def _tolerance(value, what: str) -> float:
    """A finite fraction >= 0: a nan tolerance would let every comparison pass and switch the gate off."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number) or number < 0:
        raise UserError(f"{what} must be a finite number >= 0 (a fraction), got {value!r}; e.g. 0.03")
    return number


def _group(rows: list[dict], metric: str = "acc") -> dict[tuple, dict[int, float]]:
    """Per key, each seed's recorded `metric`; a run without it (an untrained method's loss) is left out."""
    groups: dict[tuple, dict[int, float]] = {}
    for row in rows:
        if (value := row.get(metric)) is not None:
            groups.setdefault(tuple(row[k] for k in KEY_FIELDS), {})[row["seed"]] = value
    return groups


def _mean_loss(values: dict[int, float], seeds: list[int]) -> float | None:
    losses = [loss for loss in (values.get(seed) for seed in seeds) if loss is not None and loss == loss]
    if len(losses) < len(seeds):  # untrained (base), not recorded or NaN
        return None
    return round(statistics.fmean(losses), 6)


def _key(record: dict) -> tuple:
    return tuple(record[k] for k in KEY_FIELDS)


def record(suite: Suite, rows: list[dict], cpu: str | None = None) -> Path:
    """Write the current results as the records of CPU class `cpu` (default: this one), keeping the
    other classes' records and each key's reviewed tolerance."""
    cpu = cpu or numerics_class()
    tolerances = {_key(r): r.get("tolerance") for r in suite.records}
    kept = [r for r in suite.records if r.get("cpu", UNRECORDED_CPU) != cpu]
    losses = _group(rows, "train_loss")
    fingerprints = {_key(r): r["implementation"] for r in rows}
    records = []
    for key, values in sorted(_group(rows).items()):
        seeds = sorted(values)
        entry = dict(zip(KEY_FIELDS, key))
        entry |= {
            "seeds": seeds,
            "values": [round(values[s], 6) for s in seeds],
            "mean": round(statistics.fmean(values.values()), 6),
            "tolerance": tolerances.get(key) or suite.default_tolerance,
            "cpu": cpu,
            "implementation": fingerprints[key],
        }
        loss_mean = _mean_loss(losses.get(key, {}), seeds)
        if loss_mean is not None:
            entry |= {"train_loss": [round(losses[key][s], 6) for s in seeds], "train_loss_mean": loss_mean}
        records.append(entry)
    records = sorted(kept + records, key=lambda r: (_key(r), r.get("cpu", UNRECORDED_CPU)))
    recorded = {
        "at": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        **{k: v for k, v in code_version().items() if not k.startswith("mlflow.")},
        "versions": {k: v for k, v in package_versions().items() if k in ("torch", "transformers", "peft", "lm_eval")},
    }
    document: dict[str, Any] = {
        "config": os.path.relpath(suite.config_path, suite.path.parent.resolve()),
        "overrides": suite.overrides,
        "torch_threads": suite.torch_threads,
        "default_tolerance": suite.default_tolerance,
        "loss_tolerance": suite.loss_tolerance,
        "recorded": {**{c: v for c, v in suite.recorded.items() if any(r.get("cpu", UNRECORDED_CPU) == c for r in kept)}, cpu: recorded},
        "records": records,
    }
    suite.path.parent.mkdir(parents=True, exist_ok=True)
    suite.path.write_text(HEADER + yaml.safe_dump(document, sort_keys=False, allow_unicode=True, default_flow_style=None))
    suite.records, suite.recorded = records, document["recorded"]
    return suite.path
