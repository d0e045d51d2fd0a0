"""One method's study: an Optuna study on disk beside the MLflow store (runs/optuna.db), named by what can
change its trials (SearchSpace.study_name), so rerunning the same `tune` continues it; its MLflow parent
run holds every search trial's run. Here it runs locally (TPE + the space's pruner); ray_tune.py runs it
with Ray Tune."""

# Imported where used: optuna (the optional extra `tune`)
import json
import warnings
from dataclasses import dataclass, field

from rich.console import Console
from rich.markup import escape

from ...base.errors import Pruned, UserError
from ...base.paths import runs_dir
from ..store.tracking import Tracker
from .search import SearchState, run_search_trial, score_of
from .space import SearchSpace

HEARTBEAT_SECONDS = 30  # Optuna marks a RUNNING trial FAIL when its process stopped beating for 2 of these


def import_optuna():
    """Optuna, the optional `tune` extra."""
    try:
        import optuna
    except ImportError:
        raise UserError('`tune` needs Optuna: pip install -e ".[tune]" (or `make setup`)') from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # RDBStorage's heartbeat, stable since Optuna 2.8
    return optuna


def search_experiment(config) -> str:
    """Search trials go to an MLflow experiment of their own, so no table of eval results ever shows a validation score."""
    return f"{config.experiment}-search"


def storage_url() -> str:
    runs_dir().mkdir(parents=True, exist_ok=True)  # also where MLFLOW_TRACKING_URI points the runs elsewhere
    return f"sqlite:///{runs_dir() / 'optuna.db'}"


@dataclass
class Choice:
    """What one method's study spent and found: the table's budget and chosen-settings columns."""

    method: str
    study: str
    run_id: str
    budget: str
    counts: dict[str, int] = field(default_factory=dict)  # complete / pruned / failed search trials
    steps: int = 0
    score: float | None = None  # best mean validation score
    values: dict = field(default_factory=dict)  # the chosen settings


def open_study(space: SearchSpace, config, method: str):
    """The method's study, created or continued; its sampler seeded by the space's seed and the trials it
    already holds (a continued study must not draw its first trials again)."""
    optuna = import_optuna()
    storage = optuna.storages.RDBStorage(storage_url(), heartbeat_interval=HEARTBEAT_SECONDS, grace_period=2 * HEARTBEAT_SECONDS)
    name = space.study_name(config, method)
    held = len(optuna.create_study(study_name=name, storage=storage, direction="maximize", load_if_exists=True).trials)
    sampler = optuna.samplers.TPESampler(seed=space.seed * 100_003 + held, n_startup_trials=max(1, space.startup_trials))
    return optuna.create_study(study_name=name, storage=storage, direction="maximize", load_if_exists=True, sampler=sampler, pruner=pruner(space))


def pruner(space: SearchSpace):
    optuna = import_optuna()
    if space.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=space.startup_trials, n_warmup_steps=0)
    if space.pruner == "asha":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=space.report_every, reduction_factor=3)
    return optuna.pruners.NopPruner()


def held_trials(study) -> int:
    """Search trials of the study that count against its trial budget: run to the end or pruned (a failed one is retried)."""
    return sum(t.state.name in ("COMPLETE", "PRUNED") for t in study.trials)


def search_runs(tracker: Tracker, study: str) -> list:
    """Every search trial's run of a study (one per task), earlier `tune` runs included, oldest first."""
    return tracker.client.search_runs(
        [tracker.experiment_id], filter_string=f"tags.kind = 'trial' and tags.study = '{study}'", order_by=["start_time ASC"], max_results=50_000
    )


def steps_spent(tracker: Tracker, study: str, runs: list | None = None) -> int:
    return int(sum(run.data.metrics.get("search/steps", 0) for run in (search_runs(tracker, study) if runs is None else runs)))


def study_run(tracker: Tracker, name: str, method: str, space: SearchSpace, executor: str) -> str:
    """The study's MLflow parent run: the one from an earlier `tune` of this study, put back to RUNNING, or a new one."""
    found = tracker.client.search_runs([tracker.experiment_id], filter_string=f"tags.kind = 'study' and tags.study = '{name}'", max_results=1)
    if found:
        tracker.client.update_run(found[0].info.run_id, status="RUNNING")
        return found[0].info.run_id
    tags = {"kind": "study", "study": name, "method": method, "executor": executor, "space": space.path}
    run_id = tracker.create_run(f"tune {method} · {name}", tags)
    tracker.log_params(run_id, {f"space.{d.key}": d.text() for d in space.methods[method].dimensions} | {
        "budget": space.methods[method].budget.text(), "validation.fraction": space.validation_fraction,
        "validation.max_docs": space.validation_max_docs, "seed": space.seed, "pruner": space.pruner, "report_every": space.report_every,
    })  # fmt: skip
    return run_id


def search_here(study, space: SearchSpace, method: str, state: SearchState, tracker: Tracker, run_id: str, console: Console) -> None:
    """Run the trials the budget has left, one after another in this process."""
    optuna = import_optuna()
    budget = space.methods[method].budget
    left = budget.left(held_trials(study), steps_spent(tracker, study.study_name))
    if left == 0:
        console.print(f"[dim]{method}: budget spent ({budget.text()}); study {study.study_name} is complete[/]")
        return

    def objective(ot_trial) -> float:
        values = {d.key: d.sample(ot_trial) for d in space.methods[method].dimensions}
        console.print(f"[bold]{method}[/] search trial {ot_trial.number}: {escape(settings_text(values))}")

        def report(step: int, score: float) -> None:
            ot_trial.report(score, step)
            if ot_trial.should_prune():
                raise Pruned(f"validation score {score:.4f} at step {step} is below the {space.pruner} pruner's bar")

        tags = {"study": study.study_name, "search_trial": str(ot_trial.number), "executor": "local"}
        result = run_search_trial(state, tracker, run_id, console, method, values, report, tags)
        if result.status == "pruned":
            raise optuna.TrialPruned()
        if result.status == "failed":
            raise SearchTrialFailed(f"search trial {ot_trial.number} failed (its MLflow run says why)")
        assert result.score is not None  # a complete trial has its score
        return result.score

    def within_steps(study, _trial) -> None:
        if budget.steps and steps_spent(tracker, study.study_name) >= budget.steps:
            study.stop()

    study.optimize(objective, n_trials=left, catch=(SearchTrialFailed,), callbacks=[within_steps])


def settings_text(values: dict) -> str:
    return ", ".join(f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}" for key, value in values.items())


class SearchTrialFailed(Exception):
    """A search trial that failed (FAILED in MLflow); the study records it FAIL and goes on."""


def choice_of(tracker: Tracker, study: str, method: str, run_id: str, space: SearchSpace, tasks: list[str]) -> Choice:
    """What the study spent and its best configuration, read from its search runs in MLflow (the same for
    both executors and across reruns): a configuration is complete when every task has a FINISHED run,
    and scores the mean of their validation scores; of equal scores, the first tried is chosen."""
    runs = search_runs(tracker, study)
    by_values: dict[str, list] = {}
    for run in runs:
        by_values.setdefault(run.data.tags.get("search.values", ""), []).append(run)
    scores, counts = {}, {"complete": 0, "pruned": 0, "failed": 0}
    for values, group in by_values.items():
        finished = {r.data.tags["task"]: r for r in group if r.info.status == "FINISHED"}
        if values and all(task in finished for task in tasks):
            scores[values] = sum(score_of(finished[task].data.metrics, "eval/") for task in tasks) / len(tasks)
            counts["complete"] += 1
        else:
            counts["pruned" if any(r.data.tags.get("failure") == "pruned" for r in group) else "failed"] += 1
    choice = Choice(method, study, run_id, space.methods[method].budget.text(), counts, steps_spent(tracker, study, runs))
    if scores:
        best = max(scores, key=scores.__getitem__)
        choice.score, choice.values = scores[best], json.loads(best)
        tracker.log_metrics(run_id, {"best/val_score": choice.score, **{f"trials/{k}": v for k, v in counts.items()}, "search/steps": choice.steps})
        tracker.set_tags(run_id, {f"chosen.{key}": str(value) for key, value in choice.values.items()})
    return choice
