"""The Python entry points (`adamole_bench.run`, `adamole_bench.report`, `adamole_bench.render`): what
`adamole-bench run` and `report` do, for a notebook or a script, without a subprocess."""

from collections.abc import Iterable, Mapping
from pathlib import Path

from rich.console import Console

from ...base.errors import unknown
from ...base.paths import offline_defaults
from ..report.bundle import report_table, sweep_table
from ..report.render import TEXT_RENDERERS
from ..report.table import AccuracyTable
from ..settings.load import load_config
from ..store import tracking
from . import sweep


def _store_uri(store: str | Path | None) -> str:
    """A folder (as ADAMOLE_BENCH_RUNS: its mlflow.db) or an MLflow tracking URI; None: the default store."""
    if store is None:
        return tracking.default_tracking_uri()
    text = str(store)
    if "://" in text or text.startswith("sqlite:"):
        return text
    folder = Path(text).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{folder / 'mlflow.db'}"


def _overrides(settings: Mapping[str, object] | Iterable[str]) -> list[str]:
    """`{"train.lr": 1e-4}` or `["train.lr=1e-4"]` → the key=value settings `run` takes."""
    if isinstance(settings, Mapping):
        return [f"{key}={value}" for key, value in settings.items()]
    return list(settings)


def run(
    methods: list[str],
    tasks: list[str],
    *,
    seeds: list[int] | None = None,
    model: str | None = None,
    settings: Mapping[str, object] | Iterable[str] = (),
    config: str | Path | None = None,
    store: str | Path | None = None,
    experiment: str = "adamole-bench",
    console: Console | None = None,
) -> AccuracyTable | None:
    """Run the sweep `adamole-bench run --methods ... --tasks ...` runs (trials already in the store are
    reused) and return its table, or None when no trial finished. `settings`: key=value settings as a
    mapping or strings (`{"train.max_steps": 2}`); bad input raises `UserError` before any work."""
    offline_defaults()
    loaded = load_config(config, _overrides(settings), methods=list(methods), tasks=list(tasks), seeds=seeds, model=model, experiment=experiment)
    tracker = tracking.Tracker(loaded.experiment, _store_uri(store))
    outcomes = sweep.run_sweep(loaded, console or Console(), tracker=tracker)
    return sweep_table(tracker, loaded, outcomes)


def report(
    store: str | Path | None = None,
    *,
    experiment: str = "adamole-bench",
    model: str | None = None,
    methods: list[str] | None = None,
    tasks: list[str] | None = None,
    where: list[str] | None = None,
    current_code: bool = False,
) -> AccuracyTable:
    """The table `adamole-bench report` prints, over every finished trial of the store that matches."""
    tracker = tracking.Tracker(experiment, _store_uri(store))
    return report_table(tracker, model, methods, tasks, where=where, current=current_code)


def render(table: AccuracyTable, table_format: str = "markdown") -> str:
    """A table as text: markdown (with its legend and verdict), csv, latex, html or json."""
    if table_format not in TEXT_RENDERERS:
        raise unknown("format", table_format, TEXT_RENDERERS)
    return TEXT_RENDERERS[table_format](table)
