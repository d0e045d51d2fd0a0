"""A sweep: methods × tasks × seeds, each trial = fresh adapter → train → evaluate → record.

Finished trials (same config hash and seed, FINISHED in MLflow) are skipped on re-run; a trial
that fails is recorded FAILED and the sweep goes on; Ctrl-C marks the current trial and the
sweep FAILED and loses nothing already finished.
"""

import copy
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console

from ..methods.registry import StatisticsRecorder, build_method, get_method_class
from ..tasks.sources import TaskData, load_task
from . import distributed
from .config import ExperimentConfig, config_hash, to_dict, trial_config
from .data import training_examples
from .errors import UserError
from .evaluate import evaluate
from .models import BaseModel, load_base_model, resolve_device
from .provenance import code_version, eval_protocol_tags, hardware, package_versions
from .tracking import Tracker
from .train import peak_memory_mb, set_seed, train


@dataclass(frozen=True)
class Trial:
    method: str
    task: str  # the task evaluated (one MLflow run per trial)
    seed: int
    resolved: dict = field(compare=False, repr=False)
    config_hash: str = ""
    train_tasks: tuple[str, ...] = ()  # what the adapter is trained on: (task,), or every task with --mix

    @property
    def name(self) -> str:
        mixture = f" (mix: {'+'.join(self.train_tasks)})" if self.train_tasks != (self.task,) else ""
        return f"{self.method}/{self.task}/seed{self.seed}{mixture}"


@dataclass
class Outcome:
    trial: Trial
    status: str  # finished | skipped | failed
    metrics: dict = field(default_factory=dict)
    error: str | None = None
    user_error: bool = False


def plan(config: ExperimentConfig) -> list[Trial]:
    """One trial per (method, task, seed). With `mix`, the trials of one (method, seed) share one
    adapter trained on every task, so they are planned next to each other."""
    trials = []
    for task in config.tasks:
        for method in config.methods:
            resolved = trial_config(config, method, task)
            if config.mix:
                resolved["train_tasks"] = list(config.tasks)
            if not get_method_class(method).trains:
                resolved["train"] = None  # untrained baselines don't depend on train settings
            train_tasks = tuple(config.tasks) if config.mix else (task,)
            for seed in config.seeds:
                trials.append(Trial(method, task, seed, resolved, config_hash(resolved), train_tasks))
    if config.mix:
        trials.sort(key=lambda t: (config.methods.index(t.method), config.seeds.index(t.seed)))  # stable: task order kept
    return trials


def select_shard(trials: list[Trial], index: int, count: int) -> list[Trial]:
    """Deterministic slice i/n, so several machines can share one sweep through one MLflow server."""
    if count < 1 or not 0 <= index < count:
        raise UserError(f"invalid shard {index}/{count}: use i/n with 0 <= i < n, e.g. --shard 0/2")
    return trials[index::count]


def run_sweep(
    config: ExperimentConfig,
    console: Console,
    tracker: Tracker | None = None,
    shard: tuple[int, int] = (0, 1),
) -> list[Outcome]:
    trials = select_shard(plan(config), *shard)  # bad input fails before any run is created
    tracker = distributed.rank_zero_tracker(tracker, config.experiment)
    state = _SweepState(config)
    outcomes: list[Outcome] = []
    sweep_tags = {"kind": "sweep", "model": config.model, **state.precision.tags(), **code_version()}
    console.print(f"[bold]adamole-bench[/] {len(trials)} trials → MLflow {tracker.uri} (experiment '{config.experiment}'), {state.precision.describe()}")
    with tracker.run(f"sweep {time.strftime('%Y-%m-%d %H:%M:%S')}", sweep_tags) as sweep_id:
        tracker.log_dict(sweep_id, to_dict(config), "config/experiment.json")
        for number, trial in enumerate(trials, start=1):
            console.print(f"[{number}/{len(trials)}] {trial.name}", end=" ")
            done = tracker.completed_trial(trial.config_hash, trial.seed)
            if done:
                console.print("[dim]already done, skipped[/]")
                outcomes.append(Outcome(trial, "skipped", done))
                continue
            console.print()
            try:
                with tracker.run(trial.name, _trial_tags(trial, config), parent_id=sweep_id) as run_id:
                    metrics = run_trial(trial, config, state, tracker, run_id)
                outcomes.append(Outcome(trial, "finished", metrics))
                console.print(f"  [green]done[/] acc {metrics.get('eval/acc', float('nan')):.4f}")
            except UserError as err:
                outcomes.append(Outcome(trial, "failed", error=str(err), user_error=True))
                console.print(f"  [red]failed:[/] {err}")
            except Exception as err:  # a crash in one trial must not lose the others
                outcomes.append(Outcome(trial, "failed", error=f"{type(err).__name__}: {err}"))
                console.print(f"  [red]crashed:[/] {type(err).__name__}: {err}")
                console.print(f"[dim]{traceback.format_exc(limit=-3)}[/]")
        counts = {s: sum(o.status == s for o in outcomes) for s in ("finished", "skipped", "failed")}
        tracker.log_metrics(sweep_id, {f"trials/{k}": v for k, v in counts.items()})
        from .report import outcome_rows, render_markdown

        tracker.log_text(sweep_id, render_markdown(outcome_rows(outcomes)), "tables/summary.md")
    return outcomes


def _trial_tags(trial: Trial, config: ExperimentConfig) -> dict[str, str]:
    return {
        "kind": "trial",
        "method": trial.method,
        "task": trial.task,
        "seed": str(trial.seed),
        "model": config.model,
        "protocol": config.eval.protocol,
        "train_tasks": "+".join(trial.train_tasks),
        "loss_on": config.train.loss_on,
        "config_hash": trial.config_hash,
        "eval_batch_size": str(config.eval.batch_size),
        **code_version(),
    }


@dataclass
class TrainedAdapter:
    """A trained model and what it was trained on, kept while trials that share it are evaluated."""

    method: object
    model: object
    result: object
    trainable: int
    total: int
    train_data: list[TaskData]


class _SweepState:
    """What trials share: the base model (loaded once, copied per trial), each task's data, and the
    last trained adapter (reused by the next trials of a --mix group)."""

    def __init__(self, config: ExperimentConfig):
        self.config = config
        self.precision = config.resolved_precision()
        self._base: BaseModel | None = None
        self._data: dict[str, TaskData] = {}
        self._trained: tuple[tuple, TrainedAdapter] | None = None

    def base(self) -> BaseModel:
        if self._base is None:
            cfg = self.config
            self._base = load_base_model(cfg.model, device="cpu", trust_remote_code=cfg.trust_remote_code)
            self.precision.prepare(self._base.model)  # once; every trial copies the prepared base
        return self._base

    def data(self, task: str) -> TaskData:
        if task not in self._data:
            self._data[task] = load_task(task, self.config.data_dir)
        return self._data[task]

    def trained(self, trial: Trial) -> TrainedAdapter:
        key = (trial.method, trial.train_tasks, trial.seed)
        if self._trained is None or self._trained[0] != key:
            self._trained = None  # free the previous adapter before training the next
            self._trained = (key, _train_adapter(trial, self.config, self))
        return self._trained[1]


def _train_adapter(trial: Trial, config: ExperimentConfig, state: _SweepState) -> TrainedAdapter:
    base = state.base()
    method = build_method(trial.method, config.method_options.get(trial.method))
    set_seed(trial.seed)  # adapter initialisation depends on the seed
    device = distributed.context().device(resolve_device(config.device))  # cuda:<local rank> under DDP
    model = method.apply(copy.deepcopy(base.model).to(device))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())

    train_data = [state.data(task) for task in trial.train_tasks]
    examples = []
    for data in train_data:
        docs = data.splits["train"][: config.train.max_train_examples]
        if method.trains and not docs:
            raise UserError(f"task '{data.spec.name}' has no train split in {data.source}; provide one with --data-dir")
        examples += training_examples(data.spec, docs, base.tokenizer, config.train.max_length, config.train.loss_on, config.eval.protocol)
    result = train(model, method, examples if method.trains else [], config.train, trial.seed, base.tokenizer.pad_token_id, state.precision)
    return TrainedAdapter(method, model, result, trainable, total, train_data)


def run_trial(trial: Trial, config: ExperimentConfig, state: _SweepState, tracker: Tracker, run_id: str) -> dict:
    data = state.data(trial.task)
    base = state.base()
    device = distributed.context().device(resolve_device(config.device))
    tracker.set_tags(
        run_id,
        {
            "data_source": data.source,
            "data_notes": "; ".join(data.notes) or "official splits",
            **{f"data_fingerprint.{split}": fp for split, fp in data.fingerprints.items()},
            "model_fingerprint": base.fingerprint,
            "model_source": base.source,
            **state.precision.tags(),
            "device": str(device),
            **hardware(device),
            **{f"version.{k}": v for k, v in package_versions().items()},
        },
    )
    tracker.log_params(run_id, {**trial.resolved, "seed": trial.seed})
    tracker.log_dict(run_id, {**trial.resolved, "seed": trial.seed, "config_hash": trial.config_hash}, "config/trial.json")

    trained = state.trained(trial)
    method, model, result = trained.method, trained.model, trained.result
    tracker.set_tags(run_id, method.tags())
    if trial.train_tasks != (trial.task,):  # every training set of a mixture, for reproducibility
        tracker.set_tags(run_id, {f"train_data.{d.spec.name}": f"{d.source} {d.fingerprints['train']}" for d in trained.train_data})
    tracker.log_history(run_id, "train/loss", result.losses)
    if any(result.aux_losses):
        tracker.log_history(run_id, "train/aux_loss", result.aux_losses)
    if not distributed.context().is_main:
        return {}  # rank 0 evaluates and records; the other ranks only train

    started = time.perf_counter()
    recorder = method.statistics(model) if config.eval.expert_stats else StatisticsRecorder()
    with method.scoring(model, state.precision.compute_dtype) as scored, recorder as statistics:
        evaluation = evaluate(scored, base.tokenizer, data, config.eval, state.precision)
    eval_seconds = time.perf_counter() - started

    metrics = {f"eval/{k}": v for k, v in evaluation.metrics.items()}
    metrics |= {
        "eval/seconds": eval_seconds,
        "eval/docs": len(evaluation.samples),
        "params/trainable": trained.trainable,
        "params/total": trained.total,
        "train/steps": result.steps,
        "train/seconds": result.seconds,
        "train/tokens_per_second": result.tokens_per_second,
        "train/final_loss": result.losses[-1] if result.losses else float("nan"),
        "train/mean_loss": sum(result.losses) / len(result.losses) if result.losses else float("nan"),
        "memory/peak_mb": peak_memory_mb(device),
    }
    if state.precision.name == "fp16":
        metrics["train/skipped_steps"] = result.skipped_steps  # overflow steps the grad scaler skipped
    metrics |= statistics.metrics()
    tracker.log_metrics(run_id, metrics)
    tracker.set_tags(run_id, eval_protocol_tags(evaluation.results_json))
    for artifact, figure in statistics.figures().items():
        tracker.log_figure(run_id, figure, artifact)
    for artifact, table in statistics.tables().items():
        tracker.log_dict(run_id, table, artifact)
    tracker.log_dict(run_id, evaluation.results_json, "lm_eval/results.json")
    tracker.log_dict(run_id, evaluation.samples, "lm_eval/samples.json")
    if config.save_adapters and method.trains:
        with tempfile.TemporaryDirectory() as folder:
            method.save(model, Path(folder) / "adapter")
            tracker.log_artifacts(run_id, Path(folder) / "adapter", "adapter")
    return metrics
