"""Recorded results and the `check` regression gate.

A suite file (YAML, reviewed like code) names an experiment config to rerun and holds one
record per (model, method, task, protocol, config hash): the per-seed accuracies, their mean and
a tolerance, and the CPU class it was recorded on (base/machine.py): CPU reruns are exact within a
class, not across classes, so a suite keeps one set of records per class and `check` compares with
this CPU's (or, where it has none yet, another class's, and says so). `check` reruns the config in a
throwaway MLflow store (or reads existing runs), compares means, and fails on a drop beyond tolerance
or on a record it can no longer reproduce (a changed config hash means the old number is not
comparable: review and re-record).
"""

import statistics
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from rich.console import Console
from rich.table import Table

from ...base.errors import UserError
from ...base.machine import numerics_class
from ..report.results import current_code, rows_from_mlflow
from ..store.fingerprint import differences, implementation
from ..store.tracking import Tracker
from .suite import KEY_FIELDS, UNRECORDED_CPU, Suite, _group, _key, _mean_loss


@dataclass
class Delta:
    key: dict
    recorded: float | None
    current: float | None
    tolerance: float | None
    status: str  # ok | regressed | improved | drifted | missing | new
    loss_change: float | None = None  # relative change of the mean training loss
    code_changes: list[str] | None = None  # how the recorded number's code differs from the installed one (None: not recorded)
    recorded_cpu: str | None = None  # the record's CPU class where it is not this CPU's (None: this CPU's, or no record)

    @property
    def fails(self) -> bool:
        return self.status in ("regressed", "drifted", "missing")


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
    from ..run.sweep import run_sweep  # the trial stack (transformers, datasets: seconds); `check --from-mlflow` reruns nothing

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


def _records_for(suite: Suite, cpu: str) -> list[dict]:
    """One record per key: this CPU class's where the suite has it, else the nearest other class's
    (same vendor first, then the same instruction set: the closer the kernels, the closer the numbers)."""

    def nearness(record: dict) -> tuple[bool, bool, bool]:
        vendor, _, isa = record.get("cpu", UNRECORDED_CPU).rpartition(" ")
        here_vendor, _, here_isa = cpu.rpartition(" ")
        return record.get("cpu") == cpu, vendor == here_vendor, isa == here_isa

    chosen: dict[tuple, dict] = {}
    for record in suite.records:
        if _key(record) not in chosen or nearness(record) > nearness(chosen[_key(record)]):
            chosen[_key(record)] = record
    return list(chosen.values())


def compare(suite: Suite, rows: list[dict], cpu: str | None = None) -> list[Delta]:
    """Each recorded key against the rerun's `rows`, with the records of CPU class `cpu` (default: this one)."""
    cpu = cpu or numerics_class()
    current, current_loss = _group(rows), _group(rows, "train_loss")
    deltas = []
    for record in _records_for(suite, cpu):
        key = _key(record)
        recorded_cpu = None if record.get("cpu") == cpu else record.get("cpu", UNRECORDED_CPU)
        tolerance = float(record.get("tolerance", suite.default_tolerance))
        values = current.get(key, {})
        if not all(seed in values for seed in record["seeds"]):
            deltas.append(Delta(dict(zip(KEY_FIELDS, key)), record["mean"], None, tolerance, "missing", recorded_cpu=recorded_cpu))
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
        deltas.append(Delta(dict(zip(KEY_FIELDS, key)), record["mean"], mean, tolerance, status, loss_change, changes, recorded_cpu))
    recorded_keys = {_key(r) for r in suite.records}
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
        status = f"[{styles[d.status]}]{d.status}[/]" + (" (other CPU)" if d.recorded_cpu else "")
        table.add_row(name, d.key["config_hash"], number(d.recorded), number(d.current), delta, number(d.tolerance), loss, status)
    return table


def provenance_lines(suite: Suite, deltas: list[Delta], cpu: str | None = None) -> list[str]:
    """Which code and CPU class the recorded numbers came from, and where they differ from this one's."""
    cpu = cpu or numerics_class()
    lines = []
    for recorded_on in sorted({d.recorded_cpu or cpu for d in deltas if d.recorded is not None}):
        recorded = suite.recorded.get(recorded_on, {})
        dirty = " (uncommitted changes)" if recorded.get("git_dirty") == "true" else ""
        versions = ", ".join(f"{k} {v}" for k, v in (recorded.get("versions") or {}).items())
        lines.append(
            f"recorded numbers ({recorded_on}): {recorded.get('at', 'unknown date')}, git {str(recorded.get('git_commit', 'unknown'))[:12]}{dirty}, "
            f"{versions or 'versions unknown'}"
        )
    others = sorted({d.recorded_cpu for d in deltas if d.recorded_cpu})
    if others:
        lines.append(
            f"this CPU is {cpu}; the suite has no records for it, so it compares with {', '.join(others)}'s: fp32 reruns are exact "
            "within a CPU class, not across classes, and the tolerances absorb that; `adamole-bench check --record` adds this class's records"
        )
    for d in deltas:
        name = " / ".join(d.key[k] for k in ("method", "task"))
        if d.recorded is not None and d.code_changes is None:
            lines.append(f"  {name}: recorded without a code fingerprint (before fingerprints existed); re-record to pin it")
        elif d.code_changes:
            lines.append(f"  {name}: installed code differs from the recorded number's: {', '.join(d.code_changes)}")
    return lines
