"""`adamole-bench tune` after its flags are parsed: the settings and space, the studies, the final sweep,
the two tables it prints and the exit code (README "Exit codes")."""

from pathlib import Path

from rich.console import Console

from ...base.errors import EXIT_CRASHED, UserError, unknown
from ..report.render import render_markdown, render_rich
from ..run.command import exit_code
from ..run.sweep import EXECUTORS
from ..settings.load import load_config
from ..store import liveness, tracking
from .space import load_space
from .study import import_optuna
from .tuning import run_tune, tuning_markdown, tuning_table


def tune(config: Path | None, overrides: list[str], settings: dict, space: Path, console: Console, executor: str, ray_address: str | None) -> int:
    """Search each method's space with the same budget, rerun the best settings over the seeds; the exit
    code (a method left without a chosen configuration counts as a crash)."""
    experiment = load_config(config, overrides, **settings)
    search_space = load_space(space, experiment)
    import_optuna()
    if executor not in EXECUTORS:
        raise unknown("executor", executor, EXECUTORS)
    if experiment.resources.workers_per_trial > 1:  # its search trials run on one worker each: the rerun must match them
        raise UserError("tune runs each search trial on one worker, so resources.workers_per_trial applies to `run` only; leave it out")
    if executor == "ray":
        from ..run.ray_executor import import_ray  # imports ray: only for --executor ray

        import_ray()
    with liveness.sigterm_as_interrupt():
        outcomes, choices = run_tune(experiment, search_space, console, executor=executor, ray_address=ray_address)
    from ..report.bundle import sweep_table  # matplotlib and friends: only once the trials are done

    table = sweep_table(tracking.Tracker(experiment.experiment), experiment, outcomes)
    if table is not None:
        console.print(render_rich(table, width=console.width))
        console.print(render_markdown(table), markup=False, highlight=False, soft_wrap=True)
    console.print(tuning_table(choices))
    console.print(tuning_markdown(choices), markup=False, highlight=False, soft_wrap=True)
    failed = [o for o in outcomes if o.status == "failed"]
    if failed:
        return exit_code(failed)
    return 0 if all(c.values for c in choices) else EXIT_CRASHED
