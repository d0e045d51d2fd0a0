"""`adamole-bench run` after its flags are parsed: the settings, the sweep, the table it prints and the
exit code its failures give (README "Exit codes")."""

from pathlib import Path

from rich.console import Console

from ...base.errors import EXIT_CRASHED, EXIT_DIVERGED, EXIT_USER, UserError
from ..report.render import render_markdown, render_rich
from ..settings.load import load_config
from ..store import liveness, tracking
from ..train.distributed import context
from ..train.loop import StoppedAtStep
from . import sweep


def exit_code(failed: list) -> int:
    """A crash outranks a divergence, which outranks bad input or a full disk."""
    kinds = {o.failure for o in failed}
    if kinds - {"user", "disk", "diverged"}:
        return EXIT_CRASHED
    return EXIT_DIVERGED if "diverged" in kinds else EXIT_USER


def run(
    config: Path | None, overrides: list[str], settings: dict, console: Console, shard: tuple[int, int], executor: str, ray_address: str | None
) -> int:
    """Train and evaluate every trial, print the comparison (rank 0 only under torchrun); the exit code.
    `settings`: what the flags set (load_config's keyword arguments)."""
    console.quiet = not context().is_main  # under torchrun only rank 0 prints
    experiment = load_config(config, overrides, **settings)
    if ray_address is not None and executor != "ray":
        raise UserError("--ray-address applies to --executor ray only; add --executor ray or drop --ray-address")
    sweep.check_executor(experiment, executor)
    if executor == "ray":
        from .ray_executor import import_ray  # imports ray: only for --executor ray

        import_ray()  # a missing extra is one line before any work
    try:
        with liveness.sigterm_as_interrupt():
            outcomes = sweep.run_sweep(experiment, console, shard=shard, executor=executor, ray_address=ray_address)
    except StoppedAtStep:
        # Under torchrun every rank stopped after the same step; rank 0 has now recorded the trial and the sweep
        # FAILED. No rank leaves before that: torchrun would end rank 0 mid-way when the first one exits.
        context().everyone(True)
        raise
    if context().is_main:
        from ..report.bundle import sweep_table  # matplotlib and friends: only once the trials are done (as sweep.py)

        table = sweep_table(tracking.Tracker(experiment.experiment), experiment, outcomes)
        if table is not None:
            console.print(render_rich(table, width=console.width))
            console.print(render_markdown(table), markup=False, highlight=False, soft_wrap=True)
            _print_sensitivity(table, list(experiment.grid), console)
    failed = [o for o in outcomes if o.status == "failed"]
    if not failed:
        return 0
    diverged = sum(o.failure == "diverged" for o in failed)
    detail = f", {diverged} diverged" if diverged else ""
    console.print(f"[red]{len(failed)} of {len(outcomes)} trials failed{detail}[/] (recorded as FAILED in MLflow; re-run to retry them)")
    return exit_code(failed)


def _print_sensitivity(table, keys: list[str], console: Console) -> None:
    """A grid sweep's metric against each swept setting (what `report --sensitivity KEY` shows)."""
    from ..report.sensitivity import render_markdown, sensitivity  # matplotlib: as above

    for key in keys:
        try:
            console.print(render_markdown(sensitivity(table, key)), markup=False, soft_wrap=True)
        except UserError:
            pass  # e.g. only one of its values finished
