"""`adamole-bench check` after its flags are parsed: rerun (or read) the recorded suite, compare, and
say whether anything regressed (exit code 1)."""

from pathlib import Path

from rich.console import Console

from ...base.errors import UserError
from ...base.paths import package_root
from ..store import liveness
from . import regression
from . import suite as suite_file


def check(suite: Path | None, record: bool, from_mlflow: bool, console: Console) -> int:
    loaded = suite_file.load_suite(suite or package_root() / "results" / "ci-smoke.yaml")
    with liveness.sigterm_as_interrupt():
        rows = regression.existing_rows(loaded) if from_mlflow else regression.rerun(loaded, console)
    if not rows:
        raise UserError("no finished suite trials to compare; run the suite's config first or drop --from-mlflow")
    if record:
        console.print(f"recorded {len(rows)} trials in {suite_file.record(loaded, rows)}")
    deltas = regression.compare(loaded, rows)
    console.print(regression.render_deltas(deltas))
    console.print("\n".join(regression.provenance_lines(loaded, deltas)), markup=False, highlight=False, soft_wrap=True)
    failing = [d for d in deltas if d.fails]
    if failing:
        console.print(f"[red]{len(failing)} recorded result(s) regressed or could not be reproduced[/]")
        return 1
    console.print("[green]no regression beyond tolerance[/]")
    return 0
