"""`adamole-bench report` and `compare` after their flags are parsed: the table of the selected trials,
printed in the asked format, and a report bundle, a sensitivity view or a paired comparison of it."""

from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from ...base.errors import UserError, unknown
from ...base.paths import package_root
from ..settings.config import check_experiment_name
from ..store import tracking
from . import sensitivity as sensitivity_view
from .bundle import check_output_folder, report_table, write_report
from .compare import compare_methods, render_comparison
from .render import FORMATS, TEXT_RENDERERS, render_rich, render_verdict


@dataclass
class Selection:
    """Which finished trials a table holds: the filters `report` and `compare` share."""

    model: str | None = None
    methods: list[str] | None = None
    tasks: list[str] | None = None
    config_hashes: list[str] | None = None
    where: list[str] = field(default_factory=list)
    reference: bool = True
    current: bool = False

    def tags(self) -> dict[str, str]:
        """The filters as tags of a kind=report run (unset ones left out)."""
        values = {
            "model": self.model,
            "methods": ",".join(self.methods or []),
            "tasks": ",".join(self.tasks or []),
            "config_hash": ",".join(self.config_hashes or []),
            "where": " ".join(self.where),
            "current_code": self.current and "true",
        }
        return {k: v for k, v in values.items() if v}


def _table(experiment: str, selection: Selection, console: Console, published: Path | None = None):
    """The store's tracker (runs a dead process left RUNNING are marked FAILED first, and said) and the table."""
    tracker = tracking.Tracker(experiment)
    for name, why in tracker.reconciled:
        console.print(f"[yellow]marked FAILED[/] {escape(name)} (left RUNNING: {escape(why)}); it is not counted", soft_wrap=True)
    s = selection
    return tracker, report_table(tracker, s.model, s.methods, s.tasks, s.config_hashes, s.where, s.reference, published, s.current)


def report(
    experiment: str, selection: Selection, table_format: str, output: Path | None, published: Path | None, sensitivity: str | None, console: Console
) -> None:
    check_experiment_name(experiment)
    if sensitivity is not None and not sensitivity.strip():
        raise UserError(
            "--sensitivity is empty (an unset shell variable?); name a swept setting, e.g. --sensitivity adamole.max_threshold, or leave the flag out"
        )
    if table_format not in FORMATS:
        raise unknown("format", table_format, FORMATS)
    if output:
        check_output_folder(output)
    if sensitivity is not None:
        _sensitivity(sensitivity.strip(), experiment, selection, table_format, output, console)
        return
    tracker, table = _table(experiment, selection, console, published or package_root() / "results" / "published.yaml")
    if table_format == "rich":
        console.print(render_rich(table, width=console.width))
        console.print(render_verdict(table), markup=False, highlight=False, end="")
    else:
        console.print(TEXT_RENDERERS[table_format](table), markup=False, highlight=False, end="", soft_wrap=True)
    if output:
        written = write_report(tracker, table, output, selection.tags())
        console.print(f"wrote {len(written)} files to {output} (and a kind=report run in MLflow)")


def _sensitivity(key: str, experiment: str, selection: Selection, table_format: str, output: Path | None, console: Console) -> None:
    if table_format not in sensitivity_view.FORMATS:
        raise UserError(f"--sensitivity prints {', '.join(sensitivity_view.FORMATS)}; pick one with --format")
    tracker, table = _table(experiment, selection, console)
    result = sensitivity_view.sensitivity(table, key)
    if table_format == "rich":
        console.print(sensitivity_view.render_rich(result))
    else:
        console.print(sensitivity_view.TEXT_RENDERERS[table_format](result), markup=False, end="", soft_wrap=True)
    run_id, written = sensitivity_view.log_report(tracker, result, output, selection.tags())
    console.print(
        f"plot and tables → MLflow run {run_id} (sensitivity/{result.key}.png)" + (f" and {len(written)} files in {output}" if written else ""),
        soft_wrap=True,
    )


def compare(experiment: str, method_a: str, method_b: str, selection: Selection, console: Console) -> None:
    """Paired tests of two methods (each of their configs) per task; `selection` holds the trials of those two."""
    check_experiment_name(experiment)
    _, table = _table(experiment, selection, console)
    for comparison in compare_methods(table, method_a, method_b):
        console.print(render_comparison(comparison), markup=False, highlight=False, end="", soft_wrap=True)
