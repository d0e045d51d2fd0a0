"""One search trial: a sampled configuration trained and scored on a validation split carved from the
training data, through the trial machinery every sweep uses (harness/run/trials.py), with intermediate
validation scores handed to a pruner. The eval docs never enter: a search trial's TaskData holds the
rest of the train split as `train` and the carved part as `eval`."""

import copy
import dataclasses
import json
import random
from collections.abc import Callable

import numpy as np
import torch
from rich.console import Console

from ...base.errors import Pruned
from ...tasks.sources import TaskData
from ..evaluate.scoring import evaluate
from ..run.sweep import plan
from ..run.trial import Trial
from ..run.trial_state import TrialState
from ..run.trials import attempt, await_trial
from ..settings.config import config_hash
from ..store.tracking import Tracker
from .space import SearchSpace

SPLIT_VERSION = 1  # bump when `carve` changes which docs it holds out: it is in every search trial's settings
SCORES = ("acc", "exact_match")  # the validation score: accuracy, or exact match under the generate protocol


def carve(data: TaskData, fraction: float, max_docs: int | None, seed: int) -> TaskData:
    """The train split cut in two, deterministically from `seed`: a held-out part (`round(fraction × n)`,
    at most `max_docs`) to score on, the rest to train on. A train doc equal to an eval doc is never held
    out, so no eval doc is scored, even where a dataset repeats docs across its splits."""
    docs = data.splits["train"]
    official = {json.dumps(doc, sort_keys=True, default=str) for doc in data.splits["eval"]}
    order = list(range(len(docs)))
    random.Random(seed).shuffle(order)
    size = max(1, round(len(docs) * fraction))
    size = min(size, max_docs) if max_docs else size
    eligible = [i for i in order if json.dumps(docs[i], sort_keys=True, default=str) not in official]
    held = set(eligible[:size])
    if not held or len(held) >= len(docs):
        raise ValueError(f"{data.spec.name}: {len(docs)} train docs cannot give a validation split of {size}")
    splits = {"train": [d for i, d in enumerate(docs) if i not in held], "eval": [d for i, d in enumerate(docs) if i in held]}
    note = f"search: {len(held)} validation docs carved from the train split (seed {seed}); the eval split is not used"
    return TaskData(data.spec, splits, data.source, [*data.notes, note])


def score_of(metrics: dict, prefix: str = "") -> float:
    return next(metrics[prefix + name] for name in SCORES if prefix + name in metrics)


class SearchState(TrialState):
    """A TrialState whose tasks are carved (train → train + validation) and whose training reports a
    validation score every `report_every` steps to `self.report` (which raises Pruned to stop the trial)."""

    def __init__(self, config, space: SearchSpace):
        super().__init__(config)
        self.space = space
        self.report: Callable[[int, float], None] = lambda step, score: None

    def data(self, task: str) -> TaskData:
        if task not in self._data:
            space = self.space
            self._data[task] = carve(super().data(task), space.validation_fraction, space.validation_max_docs, space.seed)
        return self._data[task]

    def step_hook(self, trial: Trial, method, model) -> Callable[[int, dict], None]:
        total = trial.settings.train.max_steps

        def on_step(step: int, _values: dict) -> None:
            if step % self.space.report_every == 0 and step != total:  # the last step's score is the trial's own
                self.report(step, self._score(trial, method, model))

        return on_step

    def _score(self, trial: Trial, method, model) -> float:
        """The validation score mid-training. lm-eval reseeds the global RNGs; they are put back, so the
        rest of the training draws what it would have without this look."""
        saved = random.getstate(), np.random.get_state(), torch.get_rng_state()
        cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
        try:
            with method.scoring(model, self.precision.compute_dtype) as scored:
                result = evaluate(scored, self.base().tokenizer, self.data(trial.task), trial.settings.eval, self.precision)
        finally:
            model.train()
            random.setstate(saved[0])
            np.random.set_state(saved[1])
            torch.set_rng_state(saved[2])
            if cuda is not None:
                torch.cuda.set_rng_state_all(cuda)
        return score_of(result.metrics)


def search_trial(config, space: SearchSpace, method: str, task: str, values: dict) -> Trial:
    """The trial of `method` on `task` with the sampled `values`: planned as a one-point grid (so validated and
    named as any grid point), scored on every validation doc, its split's settings in its config hash."""
    point = copy.deepcopy(config)
    point.methods, point.tasks, point.seeds = [method], [task], [space.seed]
    point.grid = {key: [value] for key, value in values.items()}
    point.reference = point.save_adapters = False
    point.eval.limit = None  # the validation split is already capped (validation.max_docs)
    (trial,) = plan(point)
    split = {"version": SPLIT_VERSION, "fraction": space.validation_fraction, "max_docs": space.validation_max_docs, "seed": space.seed}
    resolved = trial.resolved | {"search_split": split}
    return dataclasses.replace(trial, resolved=resolved, config_hash=config_hash(resolved))


@dataclasses.dataclass
class SearchResult:
    status: str  # complete | pruned | failed
    score: float | None  # mean validation score over the tasks (complete only)
    steps: int  # optimizer steps it ran (a pruned trial: up to its last report)


def run_search_trial(
    state: SearchState,
    tracker: Tracker,
    study_run: str,
    console: Console,
    method: str,
    values: dict,
    report: Callable[[int, float], None],
    tags: dict,
) -> SearchResult:
    """Train and score `values` on every task in turn (steps count on across tasks, so a pruner compares like
    with like); an MLflow run per task under the study's run, with the sampled values and every score."""
    scores, done_steps = [], 0
    for index, task in enumerate(state.config.tasks):
        trial = search_trial(state.config, state.space, method, task, values)
        reported: list[tuple[int, float]] = []

        def forward(step: int, score: float, offset: int = done_steps, reported: list = reported) -> None:
            reported.append((step, score))
            report(offset + step, score)

        state.report = forward
        outcome = attempt(trial, state, tracker, study_run, console, tags) or await_trial(trial, state, tracker, study_run, console, tags)
        trained = reported[-1][0] if outcome.status == "pruned" and reported else int(outcome.metrics.get("train/steps", 0))
        _record(tracker, trial, values, reported, trained)
        if outcome.status in ("pruned", "failed"):
            return SearchResult(outcome.status, None, done_steps + trained)
        scores.append(score_of(outcome.metrics, "eval/"))
        done_steps += trained
        if index + 1 < len(state.config.tasks):
            try:
                report(done_steps, scores[-1])
            except Pruned:
                return SearchResult("pruned", None, done_steps)
    return SearchResult("complete", sum(scores) / len(scores), done_steps)


def _record(tracker: Tracker, trial: Trial, values: dict, reported: list[tuple[int, float]], steps: int) -> None:
    """On the trial's run: the sampled values (params `search.<key>`, tag `search.values` as JSON, what the
    study's choice is read from), the intermediate scores (`search/val_score` by step) and the steps it ran."""
    runs = tracker.client.search_runs(
        [tracker.experiment_id],
        filter_string=f"tags.identity = '{trial.identity}' and tags.seed = '{trial.seed}'",
        order_by=["start_time DESC"],
        max_results=1,
    )
    if not runs or "search.values" in runs[0].data.tags:  # none, or a finished trial reused from an earlier search
        return
    run_id = runs[0].info.run_id
    tracker.log_params(run_id, {f"search.{key}": value for key, value in values.items()})
    tracker.set_tags(run_id, {"search.values": json.dumps(values, sort_keys=True)})
    for step, score in reported:
        tracker.log_metrics(run_id, {"search/val_score": score}, step=step)
    tracker.log_metrics(run_id, {"search/steps": steps})
