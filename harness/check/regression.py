"""Recorded results and the `check` regression gate.

A suite file (YAML, reviewed like code) names an experiment config to rerun and holds one
record per (model, method, task, protocol, config hash): the per-seed accuracies, their mean and
a tolerance. `check` reruns the config in a throwaway MLflow store (or reads existing runs),
compares means, and fails on a drop beyond tolerance or on a record it can no longer reproduce
(a changed config hash means the old number is not comparable: review and re-record).
"""

import math
import os
import statistics
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from rich.console import Console
from rich.table import Table

from ...base.errors import UserError
from ..report.results import current_code, rows_from_mlflow
from ..settings.config import ExperimentConfig, read_yaml_mapping
from ..settings.load import load_config
from ..store.fingerprint import differences, implementation
from ..store.provenance import code_version, package_versions
from ..store.tracking import Tracker

DEFAULT_TOLERANCE = 0.03  # accuracy points as a fraction; CPU reruns are exact, this absorbs other hardware
# Relative change of the mean training loss that counts as drift. Accuracy saturates on easy suites
# (a broken router can still reach 100%); the loss curve of a deterministic CPU rerun does not.
DEFAULT_LOSS_TOLERANCE = 0.05
KEY_FIELDS = ("model", "method", "task", "protocol", "config_hash")
HEADER = """\
# Recorded results for `adamole-bench check` (docs/reproducibility.md, "Recorded results").
# config: experiment YAML the suite reruns (path relative to this file); overrides: key=value on top.
# torch_threads: CPU threads during the rerun (float reductions depend on it, so it is part of the protocol).
# records: one per (model, method, task, protocol, config_hash); values are per-seed accuracies (fractions),
#   mean is their mean, tolerance the largest allowed drop of the rerun's mean below it; train_loss is the
#   mean training loss per seed, and a relative change beyond loss_tolerance fails as "drifted".
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
    recorded: dict = field(default_factory=dict)  # when, from which commit and package versions

    def experiment(self) -> ExperimentConfig:
        return load_config(self.config_path, self.overrides)


@dataclass
class Delta:
    key: dict
    recorded: float | None
    current: float | None
    tolerance: float | None
    status: str  # ok | regressed | improved | drifted | missing | new
    loss_change: float | None = None  # relative change of the mean training loss
    code_changes: list[str] | None = None  # how the recorded number's code differs from the installed one (None: not recorded)

    @property
    def fails(self) -> bool:
        return self.status in ("regressed", "drifted", "missing")


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
        recorded=document.get("recorded") or {},
    )


def _tolerance(value, what: str) -> float:
    """A finite fraction >= 0: a nan tolerance would let every comparison pass and switch the gate off."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number) or number < 0:
        raise UserError(f"{what} must be a finite number >= 0 (a fraction), got {value!r}; e.g. 0.03")
    return number


@contextmanager
def _threads(count: int | None):
    previous = torch.get_num_threads()
    if count:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def rerun(suite: Suite, console: Console) -> list[dict]:
    """Run the suite's sweep from scratch in a throwaway store, so nothing is skipped as done."""
    from ..run.sweep import run_sweep

    config = suite.experiment()
    with tempfile.TemporaryDirectory(prefix="adamole-check-") as store, _threads(suite.torch_threads):
        tracker = Tracker(config.experiment, uri=f"sqlite:///{store}/mlflow.db")
        outcomes = run_sweep(config, console, tracker)
        failed = [o for o in outcomes if o.status == "failed"]
        if failed:
            raise UserError(f"{len(failed)} suite trials failed, first: {failed[0].trial.name}: {failed[0].error}")
        return rows_from_mlflow(tracker, model=config.model)


def existing_rows(suite: Suite) -> list[dict]:
    """The suite's trials as already recorded in the MLflow store (no rerun), computed by the installed code."""
    config = suite.experiment()
    rows = rows_from_mlflow(Tracker(config.experiment), model=config.model, methods=config.methods, tasks=config.tasks)
    return [row for row in rows if row["seed"] in config.seeds and current_code(row)]


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


def compare(suite: Suite, rows: list[dict]) -> list[Delta]:
    current, current_loss = _group(rows), _group(rows, "train_loss")
    deltas = []
    for record in suite.records:
        key = tuple(record[k] for k in KEY_FIELDS)
        tolerance = float(record.get("tolerance", suite.default_tolerance))
        values = current.get(key, {})
        if not all(seed in values for seed in record["seeds"]):
            deltas.append(Delta(dict(zip(KEY_FIELDS, key)), record["mean"], None, tolerance, "missing"))
            continue
        mean = round(statistics.fmean(values[seed] for seed in record["seeds"]), 6)  # as recorded
        difference = mean - record["mean"]
        status = "regressed" if difference < -tolerance else "improved" if difference > tolerance else "ok"
        loss_change = None
        loss_now = _mean_loss(current_loss.get(key, {}), record["seeds"])
        if record.get("train_loss_mean") is not None and loss_now is not None:
            loss_change = (loss_now - record["train_loss_mean"]) / max(abs(record["train_loss_mean"]), 1e-8)
            if abs(loss_change) > suite.loss_tolerance and status != "regressed":
                status = "drifted"
        changes = differences(record["implementation"], implementation(record["method"])) if record.get("implementation") else None
        deltas.append(Delta(dict(zip(KEY_FIELDS, key)), record["mean"], mean, tolerance, status, loss_change, changes))
    recorded_keys = {tuple(r[k] for k in KEY_FIELDS) for r in suite.records}
    for key, values in current.items():
        if key not in recorded_keys:
            deltas.append(Delta(dict(zip(KEY_FIELDS, key)), None, statistics.fmean(values.values()), None, "new"))
    return deltas


def render_deltas(deltas: list[Delta]) -> Table:
    styles = {"ok": "green", "improved": "cyan", "new": "yellow", "regressed": "bold red", "drifted": "bold red", "missing": "bold red"}
    table = Table(title="check: rerun vs recorded (accuracy %)")
    table.add_column("model / method / task / protocol", overflow="fold")
    table.add_column("config", overflow="fold")
    for column in ("recorded", "now", "delta", "tol.", "loss Δ"):
        table.add_column(column, justify="right", no_wrap=True)
    table.add_column("status", no_wrap=True)

    def number(value: float | None) -> str:
        return "–" if value is None else f"{value * 100:.2f}"

    for d in deltas:
        delta = "–" if d.recorded is None or d.current is None else f"{(d.current - d.recorded) * 100:+.2f}"
        name = " / ".join(d.key[k] for k in ("model", "method", "task", "protocol"))
        loss = "–" if d.loss_change is None else f"{d.loss_change * 100:+.1f}%"
        table.add_row(
            name, d.key["config_hash"], number(d.recorded), number(d.current), delta, number(d.tolerance), loss, f"[{styles[d.status]}]{d.status}[/]"
        )
    return table


def provenance_lines(suite: Suite, deltas: list[Delta]) -> list[str]:
    """Which code the recorded numbers came from, and where it differs from the installed code."""
    recorded = suite.recorded
    dirty = " (uncommitted changes)" if recorded.get("git_dirty") == "true" else ""
    versions = ", ".join(f"{k} {v}" for k, v in (recorded.get("versions") or {}).items())
    lines = [
        f"recorded numbers: {recorded.get('at', 'unknown date')}, git {str(recorded.get('git_commit', 'unknown'))[:12]}{dirty}, {versions or 'versions unknown'}"
    ]
    for d in deltas:
        name = " / ".join(d.key[k] for k in ("method", "task"))
        if d.recorded is not None and d.code_changes is None:
            lines.append(f"  {name}: recorded without a code fingerprint (before fingerprints existed); re-record to pin it")
        elif d.code_changes:
            lines.append(f"  {name}: installed code differs from the recorded number's: {', '.join(d.code_changes)}")
    return lines


def record(suite: Suite, rows: list[dict]) -> Path:
    """Write the current results as the suite's records, keeping each record's reviewed tolerance."""
    tolerances = {tuple(r[k] for k in KEY_FIELDS): r.get("tolerance") for r in suite.records}
    losses = _group(rows, "train_loss")
    fingerprints = {tuple(r[k] for k in KEY_FIELDS): r["implementation"] for r in rows}
    records = []
    for key, values in sorted(_group(rows).items()):
        seeds = sorted(values)
        entry = dict(zip(KEY_FIELDS, key))
        entry |= {
            "seeds": seeds,
            "values": [round(values[s], 6) for s in seeds],
            "mean": round(statistics.fmean(values.values()), 6),
            "tolerance": tolerances.get(key) or suite.default_tolerance,
            "implementation": fingerprints[key],
        }
        loss_mean = _mean_loss(losses.get(key, {}), seeds)
        if loss_mean is not None:
            entry |= {"train_loss": [round(losses[key][s], 6) for s in seeds], "train_loss_mean": loss_mean}
        records.append(entry)
    document: dict[str, Any] = {
        "config": os.path.relpath(suite.config_path, suite.path.parent.resolve()),
        "overrides": suite.overrides,
        "torch_threads": suite.torch_threads,
        "default_tolerance": suite.default_tolerance,
        "loss_tolerance": suite.loss_tolerance,
        "recorded": {
            "at": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            **{k: v for k, v in code_version().items() if not k.startswith("mlflow.")},
            "versions": {k: v for k, v in package_versions().items() if k in ("torch", "transformers", "peft", "lm_eval")},
        },
        "records": records,
    }
    suite.path.parent.mkdir(parents=True, exist_ok=True)
    suite.path.write_text(HEADER + yaml.safe_dump(document, sort_keys=False, allow_unicode=True, default_flow_style=None))
    suite.records, suite.recorded = records, document["recorded"]
    return suite.path
