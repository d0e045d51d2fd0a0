"""`tune --executor ray`: a method's study through Ray Tune, Optuna's TPE as its searcher (OptunaSearch on the
same study on disk, so a rerun continues it) and ASHA stopping trials whose intermediate validation score
falls behind. Each Ray trial runs its search trial exactly as the local executor does
(search.run_search_trial), logging to the same MLflow store; a worker keeps its loaded base between trials.

Ray's OptunaSearch tells the study the last score a trial reported, so a trial ASHA stopped is COMPLETE in
the study with its partial score (TPE learns from it); the choice is read from MLflow (study.choice_of),
where that trial is pruned and never chosen."""

import io
import os

from ray import tune
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.optuna import OptunaSearch
from rich.console import Console

from ...base.errors import Pruned
from ...base.paths import offline_defaults, runs_dir
from ..run.ray_executor import RayExecutor
from ..store.tracking import Tracker
from .search import SearchState, run_search_trial
from .space import SearchSpace
from .study import held_trials, import_optuna, search_experiment, steps_spent, storage_url

_cached: dict = {}  # per worker process: the tracker and the search state (its loaded base) between trials


class StepBudget(tune.Stopper):
    """Stops the whole search once its trials together ran `steps` optimizer steps."""

    def __init__(self, steps: int):
        self.steps = steps
        self.seen: dict[str, int] = {}

    def __call__(self, trial_id: str, result: dict) -> bool:
        self.seen[trial_id] = result.get("step", 0)
        return False

    def stop_all(self) -> bool:
        return sum(self.seen.values()) >= self.steps


class DefineByRun:
    """OptunaSearch's space as a function of the Optuna trial (picklable, as Ray saves its searcher)."""

    def __init__(self, dimensions):
        self.dimensions = dimensions

    def __call__(self, trial) -> dict:
        return {d.key: d.sample(trial) for d in self.dimensions}


def search_on_ray(study, space: SearchSpace, method: str, config, tracker: Tracker, run_id: str, console: Console, address: str | None) -> None:
    optuna = import_optuna()
    budget = space.methods[method].budget
    spent = steps_spent(tracker, study.study_name)
    left = budget.left(held_trials(study), spent)
    if left == 0:
        console.print(f"[dim]{method}: budget spent ({budget.text()}); study {study.study_name} is complete[/]")
        return
    remote = RayExecutor(
        config, tracker.uri, address, console, groups=0
    )  # connects, no warm workers (Ray Tune has its own); a trial must fit, and every node reach the store
    searcher = OptunaSearch(
        space=DefineByRun(space.methods[method].dimensions),
        metric="val_score",
        mode="max",
        sampler=study.sampler,
        study_name=study.study_name,
        storage=optuna.storages.RDBStorage(storage_url()),
    )
    steps = config.train.max_steps * len(config.tasks)
    scheduler = ASHAScheduler(
        time_attr="step",
        metric="val_score",
        mode="max",
        max_t=max(steps, space.report_every + 1),
        grace_period=space.report_every,
        reduction_factor=3,
    )
    trainable = tune.with_parameters(
        _ray_trial,
        config=config,
        space=space,
        method=method,
        study=study.study_name,
        study_run=run_id,
        uri=remote.uri,
        experiment=search_experiment(config),
    )
    resources = {"cpu": config.resources.cpus_per_trial, "gpu": config.resources.gpus_per_trial}
    tuner = tune.Tuner(
        tune.with_resources(trainable, resources),
        tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler, num_samples=left or -1),  # -1: until the step budget stops it
        run_config=tune.RunConfig(
            name=f"{study.study_name}-{held_trials(study)}",
            storage_path=str(runs_dir() / "ray_tune"),
            verbose=0,
            stop=StepBudget(budget.steps - spent) if budget.steps else None,
        ),
    )
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"  # Ray Tune's newer console output prints its tables even at verbose=0
    console.print(f"[bold]{method}[/]: searching through Ray Tune (TPE, ASHA) for {budget.text()}, {len(remote.nodes)} node(s)")
    try:
        tuner.fit()
    finally:
        remote.ray.shutdown()


def _ray_trial(sampled: dict, config, space: SearchSpace, method: str, study: str, study_run: str, uri: str, experiment: str) -> None:
    """One Ray Tune trial, on a worker: the search trial of `sampled`, its scores reported to ASHA."""
    offline_defaults()
    tracker = _cached.get(uri) or _cached.setdefault(uri, Tracker(experiment, uri=uri))
    state = _cached.get(study) or _cached.setdefault(study, SearchState(config, space))

    def report(step: int, score: float) -> None:
        try:
            tune.report({"val_score": score, "step": step})
        except SystemExit:  # Ray Tune's way of stopping a trial the scheduler dropped
            raise Pruned(f"ASHA stopped it at step {step} (validation score {score:.4f})") from None

    tags = {"study": study, "search_trial": tune.get_context().get_trial_id(), "executor": "ray"}
    try:
        result = run_search_trial(state, tracker, study_run, Console(file=io.StringIO()), method, sampled, report, tags)
    finally:
        state.forget_adapter()
    if result.status == "failed":
        raise RuntimeError("the search trial failed (its MLflow run says why)")
    if result.status == "complete":
        tune.report({"val_score": result.score, "step": result.steps})
