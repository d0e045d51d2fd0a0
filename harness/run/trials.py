"""One trial in this process: skip it if done, claim it, train, evaluate, record; what both executors run.

A trial that fails or diverges is recorded FAILED and returned as a failed Outcome; Ctrl-C, SIGTERM or
SIGUSR1 marks it FAILED and propagates (after a step checkpoint, harness/train/checkpoint.py, that its
next attempt resumes from; the checkpoint goes once the trial is FINISHED). A trial another live
process holds is waited for, and taken over if that process dies (harness/store/claims.py).
"""

import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from ...base.errors import Diverged, Pruned, UserError, storage_problem
from ...base.progress import end_header
from ...methods.registry import StatisticsRecorder
from ..evaluate.scoring import evaluate
from ..model.loading import resolve_device
from ..settings.config import ExperimentConfig
from ..settings.grid import value_text
from ..store.fingerprint import differences
from ..store.provenance import code_version, eval_protocol_tags, hardware, package_versions
from ..store.tracking import Tracker, run_page
from ..train import distributed
from ..train.loop import PeakMemory, release_free_heap
from ..train.rank_checkpoints import trial_checkpoint
from .trial import Trial
from .trial_state import TrainedAdapter, TrialState

FAILURES = ("user", "disk", "diverged", "crashed")  # what failed a trial; decides the exit code (cli.py)


@dataclass
class Outcome:
    trial: Trial
    status: str  # finished | skipped | failed | pruned (a search trial, harness/tune/)
    metrics: dict = field(default_factory=dict)
    error: str | None = None
    failure: str | None = None  # one of FAILURES when status is failed


def attempt(
    trial: Trial, state: "TrialState", tracker: Tracker, sweep_id: str, console: Console, tags: dict[str, str] | None = None
) -> Outcome | None:
    """Skip a finished trial, or claim and run it; None when another live process holds it. `tags` go on the
    trial's run from its creation (e.g. the Ray task that runs it). Its step checkpoints go once it is FINISHED."""
    outcome = _attempt(trial, state, tracker, sweep_id, console, tags)
    if outcome is not None:
        _drop_checkpoints(trial, outcome, console)
    return outcome


def _drop_checkpoints(trial: Trial, outcome: Outcome, console: Console) -> None:
    """Unless kept, remove a FINISHED trial's step checkpoints: every rank its own, once rank 0 has recorded the
    trial (until then a rank 0 killed while evaluating leaves all ranks' files to resume from)."""
    config = trial.settings
    assert config is not None  # planned trials carry their settings (sweep.plan)
    ctx = distributed.context()
    finished = ctx.broadcast(outcome.status == "finished")  # rank 0's outcome; under torchrun every rank gets here
    if not finished or config.train.keep_checkpoints:
        return
    try:
        trial_checkpoint(trial.identity, trial.seed, config.train, ctx).remove()  # nothing left to resume
    except OSError as err:
        console.print(f"  [yellow]could not remove the trial's step checkpoints:[/] {escape(str(err))}", soft_wrap=True)


def _attempt(
    trial: Trial, state: "TrialState", tracker: Tracker, sweep_id: str, console: Console, tags: dict[str, str] | None = None
) -> Outcome | None:
    config = trial.settings
    assert config is not None  # planned trials carry their settings (sweep.plan)
    try:
        done = tracker.completed_trial(trial.identity, trial.seed)
        if done:
            console.print(f"[dim]already done, skipped[/] (run {done['run_id']})")
            return Outcome(trial, "skipped", done)
        _say_if_other_code(trial, tracker, console)
        run_id = tracker.claim_trial(trial.identity, trial.seed, trial.name, {**trial_tags(trial), **(tags or {})}, parent_id=sweep_id)
        if run_id is None:
            return None
        end_header(console)
        with tracker.running(run_id):
            metrics = run_trial(trial, config, state, tracker, run_id)
    except UserError as err:
        console.print(f"  [red]failed:[/] {escape(str(err))}", soft_wrap=True)
        return Outcome(trial, "failed", error=str(err), failure="user")
    except Diverged as err:
        console.print(f"  [red]diverged:[/] {escape(str(err))}", soft_wrap=True)
        return Outcome(trial, "failed", error=str(err), failure="diverged")
    except Pruned as err:  # a search trial the pruner stopped (harness/tune/)
        console.print(f"  [yellow]pruned:[/] {escape(str(err))}", soft_wrap=True)
        return Outcome(trial, "pruned", error=str(err))
    except Exception as err:  # noqa: BLE001 - a crash in one trial must not lose the others
        problem = storage_problem(err)
        if problem:
            message = f"{problem}: free space and run the same command again (finished trials are kept)"
            console.print(f"  [red]failed:[/] {escape(message)}", soft_wrap=True)
            return Outcome(trial, "failed", error=message, failure="disk")
        console.print(f"  [red]crashed:[/] {type(err).__name__}: {escape(str(err))}")
        console.print(f"[dim]{escape(traceback.format_exc(limit=-3))}[/]")
        return Outcome(trial, "failed", error=f"{type(err).__name__}: {err}", failure="crashed")
    console.print(f"  [green]done[/] acc {metrics.get('eval/acc', float('nan')):.4f}, run {run_id} {_page(tracker, run_id)}", soft_wrap=True)
    return Outcome(trial, "finished", metrics)


def _page(tracker: Tracker, run_id: str) -> str:
    return run_page(tracker, run_id) if isinstance(tracker, Tracker) else ""  # under torchrun: the id alone


def _say_if_other_code(trial: Trial, tracker: Tracker, console: Console) -> None:
    """One line when the store holds this trial's settings and seed from other code or packages: it reruns."""
    other = tracker.finished_elsewhere(trial.config_hash, trial.seed)
    if other:
        changed = differences(other, trial.implementation)
        console.print(
            f"[yellow]the store has this trial from other code or packages[/] ({escape(', '.join(changed) or 'implementation unknown')}); rerunning",
            soft_wrap=True,
        )


DIED = ("stale", "terminated", "interrupted")  # failures of another process that are worth retrying here


def await_trial(trial: Trial, state: "TrialState", tracker: Tracker, sweep_id: str, console: Console, tags: dict[str, str] | None = None) -> Outcome:
    """Wait for a trial another process runs; if that process dies, claim the trial and run it here."""
    console.print(f"waiting for {trial.name} (running in another process)")
    status, info = tracker.wait_for_trial(trial.identity, trial.seed)
    if status == "failed" and info["failure"] in DIED:
        console.print(f"  the other process stopped ({escape(info['error'])}); retrying here", soft_wrap=True)
        outcome = attempt(trial, state, tracker, sweep_id, console, tags)
        if outcome is not None:
            return outcome
        status, info = tracker.wait_for_trial(trial.identity, trial.seed)  # a third process took it over
    if status == "finished":
        console.print(f"  [green]done elsewhere[/] acc {info.get('eval/acc', float('nan')):.4f}")
        return Outcome(trial, "skipped", info)
    console.print(f"  [red]failed elsewhere:[/] {escape(info['error'])}", soft_wrap=True)
    return Outcome(trial, "failed", error=info["error"], failure=info["failure"] if info["failure"] in FAILURES else "crashed")


def trial_tags(trial: Trial) -> dict[str, str]:
    config = trial.settings
    assert config is not None  # planned trials carry their settings (sweep.plan)
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
        "identity": trial.identity,
        **trial.implementation,
        "eval_batch_size": str(config.eval.batch_size),
        **code_version(),
        **({"grid": ",".join(k for k, _ in trial.grid)} if trial.grid else {}),
        **{f"grid.{key}": value_text(value) for key, value in trial.grid},
    }


def run_trial(trial: Trial, config: ExperimentConfig, state: TrialState, tracker: Tracker, run_id: str) -> dict:
    """Train (or reuse the --mix group's adapter), evaluate and record one claimed trial; `config` is its grid point's."""
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
            "gradient_checkpointing": str(config.train.gradient_checkpointing).lower(),  # memory and time, not the number
            **hardware(device),
            **{f"version.{k}": v for k, v in package_versions().items()},
        },
    )
    tracker.log_params(run_id, {**trial.resolved, "seed": trial.seed})
    tracker.log_dict(
        run_id, {**trial.resolved, "seed": trial.seed, "config_hash": trial.config_hash, "implementation": trial.implementation}, "config/trial.json"
    )

    state.forget_adapter(keep=trial)  # the previous trial's adapter is no part of this one's memory
    with PeakMemory(device) as memory, state.adapter(trial) as trained:
        return _train_and_evaluate(trial, config, state, tracker, run_id, trained, memory)


def _train_and_evaluate(
    trial: Trial, config: ExperimentConfig, state: TrialState, tracker: Tracker, run_id: str, trained: TrainedAdapter, memory: PeakMemory
) -> dict:
    """The rest of `run_trial`, while the trial's adapter is on the base and its memory is measured."""
    data, base = state.data(trial.task), state.base()
    method, model, result = trained.method, trained.model, trained.result
    tracker.set_tags(run_id, {**method.tags(), "resumed_from_step": str(result.resumed_from)})
    if trial.train_tasks != (trial.task,):  # every training set of a mixture, for reproducibility
        tracker.set_tags(run_id, {f"train_data.{d.spec.name}": f"{d.source} {d.fingerprints['train']}" for d in trained.train_data})
    tracker.log_history(run_id, "train/loss", result.losses)
    if any(result.aux_losses):
        tracker.log_history(run_id, "train/aux_loss", result.aux_losses)
    if not distributed.context().is_main:
        return {}  # rank 0 evaluates and records; the other ranks only train

    release_free_heap()  # what training freed goes back to the system before evaluation's long batches are allocated
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
        **memory.metrics(),
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
            method.save(model, Path(folder) / "adapter", base.reference())
            tracker.log_artifacts(run_id, Path(folder) / "adapter", "adapter")
    return metrics
