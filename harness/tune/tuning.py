"""`tune`: each method's study (its budget, its space), then each method's best settings rerun over the
requested seeds on the eval split as an ordinary sweep, so they are stored, reused and reported like any run."""

import copy

from rich.console import Console
from rich.table import Table

from ...base.errors import UserError
from ..run.sweep import run_sweep
from ..run.trials import Outcome
from ..settings.config import ExperimentConfig
from ..store.tracking import Tracker
from .search import SearchState
from .space import SearchSpace
from .study import Choice, choice_of, import_optuna, open_study, search_experiment, search_here, settings_text, storage_url, study_run

COLUMNS = ("method", "budget", "search trials", "steps", "best validation", "chosen settings", "study")


def run_tune(
    config: ExperimentConfig, space: SearchSpace, console: Console, executor: str = "local", ray_address: str | None = None
) -> tuple[list[Outcome], list[Choice]]:
    import_optuna()
    state = SearchState(config, space)
    for task in config.tasks:
        try:
            state.data(task)  # a train split too small to carve: one line now, before any run
        except ValueError as err:
            raise UserError(f"{err}; lower validation.fraction in {space.path} or use a task with more train docs") from None
    tracker = Tracker(search_experiment(config))
    console.print(
        f"[bold]adamole-bench tune[/] {', '.join(config.methods)} on {', '.join(config.tasks)} → MLflow {tracker.uri}, studies in {storage_url().removeprefix('sqlite:///')}"
    )
    choices = []
    for method in config.methods:
        study = open_study(space, config, method)
        run_id = study_run(tracker, study.study_name, method, space, executor)
        with tracker.running(run_id):
            if executor == "ray":
                from .ray_tune import search_on_ray  # Ray Tune: the optional ray extra, slow to import

                search_on_ray(study, space, method, config, tracker, run_id, console, ray_address)
            else:
                search_here(study, space, method, state, tracker, run_id, console)
            choices.append(choice_of(tracker, study.study_name, method, run_id, space, config.tasks))
    state.forget_adapter()
    del state  # the sweeps load their own base
    for choice in choices:  # every study's page shows what all of them spent and chose
        tracker.log_text(choice.run_id, tuning_markdown(choices), "tables/tuning.md")
    outcomes = []
    for choice in choices:
        if not choice.values:
            console.print(f"[red]{choice.method}: no search trial completed[/] ({choice.counts}); nothing to rerun (see study {choice.study})")
            continue
        console.print(
            f"[bold]{choice.method}[/]: best validation {choice.score:.4f} with {settings_text(choice.values)}; rerunning on the eval split"
        )
        outcomes += run_sweep(chosen_config(config, choice), console, executor=executor, ray_address=ray_address)
    return outcomes, choices


def chosen_config(config: ExperimentConfig, choice: Choice) -> ExperimentConfig:
    """The sweep of one method with its chosen settings, as a one-point grid: validated, and its values named in
    each trial's name and `grid.<key>` tags, like any swept setting."""
    final = copy.deepcopy(config)
    final.methods, final.grid = [choice.method], {key: [value] for key, value in choice.values.items()}
    return final


def tuning_rows(choices: list[Choice]) -> list[list[str]]:
    rows = []
    for c in choices:
        trials = ", ".join(f"{n} {state}" for state, n in c.counts.items() if n) or "none"
        best = f"{c.score:.4f}" if c.score is not None else "–"
        rows.append([c.method, c.budget, trials, str(c.steps), best, settings_text(c.values) or "–", c.study])
    return rows


def tuning_table(choices: list[Choice]) -> Table:
    table = Table(title="tuning: each method's budget and chosen settings (validation split carved from train)")
    for column in COLUMNS:
        table.add_column(column, overflow="fold")  # a chosen setting is never cut to an ellipsis
    for row in tuning_rows(choices):
        table.add_row(*row)
    return table


def tuning_markdown(choices: list[Choice]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in tuning_rows(choices)])
