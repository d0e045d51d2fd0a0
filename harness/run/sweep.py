"""A sweep: grid points × methods × tasks × seeds, each trial = fresh adapter → train → evaluate → record.

Finished trials (same config hash and seed, FINISHED in MLflow) are skipped on re-run; a trial
that fails or diverges is recorded FAILED and the sweep goes on; Ctrl-C or SIGTERM marks the
current trial and the sweep FAILED and loses nothing already finished. Each trial is claimed
atomically first (harness/store/claims.py): a trial another live process holds is waited for, not rerun.
The trials run here one after another (`--executor local`) or as Ray tasks (harness/run/ray_executor.py).
"""

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import TypeVar

from rich.console import Console
from rich.markup import escape

from ...base.errors import UserError, error_line, storage_problem, unknown
from ...base.progress import sweep_progress
from ...methods.registry import get_method_class
from ..report.results import REFERENCE_METHOD
from ..report.sensitivity import log_sweep_sensitivity
from ..settings.config import ExperimentConfig, config_hash, to_dict, trial_config
from ..settings.grid import applies, grid_points
from ..store.fingerprint import implementation
from ..store.provenance import code_version
from ..store.tracking import Tracker, default_tracking_uri, sweep_name
from ..train import distributed
from ..train.checkpoint import checkpoint_folder
from .trial import Trial
from .trials import Outcome, TrialState, attempt, await_trial

EXECUTORS = ("local", "ray")
TrialT = TypeVar("TrialT")  # select_shard only slices: any list shards the same way


def plan(config: ExperimentConfig) -> list[Trial]:
    """One trial per (grid point, method, task, seed), the zero-shot references first. With `mix`, the
    trials of one (grid point, method, seed) share one adapter trained on every task, so they are planned
    next to each other. A trial that two grid points share (lora under a grid of adamole options) is planned once."""
    references, trials = [], []
    for point in grid_points(config):
        cfg = point.config
        trials += _point_trials(cfg, point.values)
        if cfg.reference and REFERENCE_METHOD not in cfg.methods:
            references += [_reference_trial(cfg, task, point.values) for task in cfg.tasks]
    planned, seen = [], set()
    for trial in references + trials:
        if (trial.config_hash, trial.seed) not in seen:
            seen.add((trial.config_hash, trial.seed))
            planned.append(trial)
    return planned


def _point_trials(config: ExperimentConfig, swept: tuple) -> list[Trial]:
    trials = []
    # Processes that train each trial together (torchrun's, or resources.workers_per_trial Ray workers): each takes
    # train.batch_size examples of a global batch of batch_size × world_size, a different number (docs/distributed.md).
    world_size = distributed.context().world_size * config.resources.workers_per_trial
    for task in config.tasks:
        for method in config.methods:
            trains = get_method_class(method).trains
            resolved = trial_config(config, method, task)
            if config.mix:
                resolved["train_tasks"] = list(config.tasks)
            if not trains:
                resolved["train"] = None  # untrained baselines don't depend on train settings
            elif world_size > 1:
                resolved["train"]["world_size"] = world_size  # absent for one process: the hashes of single-process trials stay
            train_tasks = tuple(config.tasks) if config.mix else (task,)
            mine = tuple((k, v) for k, v in swept if applies(k, method, trains))
            for seed in config.seeds:
                trials.append(Trial(method, task, seed, resolved, config_hash(resolved), train_tasks, mine, config, implementation(method)))
    if config.mix:
        trials.sort(key=lambda t: (config.methods.index(t.method), config.seeds.index(t.seed)))  # stable: task order kept
    return trials


def _reference_trial(config: ExperimentConfig, task: str, swept: tuple) -> Trial:
    """The zero-shot base model on a task, the reference row of every table. It does not train, so
    one seed (always 0, whatever --seeds says) is enough and a later sweep finds it done."""
    resolved = trial_config(config, REFERENCE_METHOD, task) | {"train": None}
    mine = tuple((k, v) for k, v in swept if applies(k, REFERENCE_METHOD, False))
    return Trial(REFERENCE_METHOD, task, 0, resolved, config_hash(resolved), (task,), mine, config, implementation(REFERENCE_METHOD))


def slurm_array_shard(environ: Mapping[str, str]) -> tuple[int, int] | None:
    """This array task's slice i/n, from SLURM's variables, whatever the array's first index and step.

    `--array=1-8` numbers tasks 1..8 and `--array=0-15:2` numbers them 0, 2, ..., 14; both give slices
    0..7 of 8. A list such as `--array=1,4,9` has no such mapping and is refused (pass --shard i/n)."""
    if "SLURM_ARRAY_TASK_ID" not in environ:
        return None
    names = ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_MIN", "SLURM_ARRAY_TASK_COUNT")
    try:
        task, first, count = (int(environ[name]) for name in names)
        step = int(environ.get("SLURM_ARRAY_TASK_STEP") or 1)
    except (KeyError, ValueError):
        shown = ", ".join(f"{name}={environ.get(name)!r}" for name in names)
        raise UserError(f"cannot read this SLURM array task's slice ({shown}); pass --shard i/n explicitly") from None
    offset, misaligned = divmod(task - first, step) if step > 0 else (-1, 0)
    if misaligned or not 0 <= offset < count:
        raise UserError(
            f"SLURM array task {task} is not task i of an evenly spaced array of {count} starting at {first} (step {step}); "
            "use --array=A-B[:S], or pass --shard i/n explicitly"
        )
    return offset, count


def select_shard(trials: list[TrialT], index: int, count: int) -> list[TrialT]:
    """Deterministic slice i/n, so several machines can share one sweep through one MLflow server."""
    if count < 1 or not 0 <= index < count:
        raise UserError(f"invalid shard {index}/{count}: use i/n with 0 <= i < n, e.g. --shard 0/2")
    return trials[index::count]


def pinned_checkpoint_folder(config: ExperimentConfig, store_uri: str) -> ExperimentConfig:
    """The checkpoint folder as an absolute path, so an executor's workers (another working directory) find it
    too: `train.checkpoint_dir`, else `checkpoints/` beside a local sqlite store (the one this sweep writes to,
    e.g. `run(store=...)`), else beside the default store."""
    if config.train.checkpoint_dir:
        folder = checkpoint_folder(config.train)
    elif store_uri.startswith("sqlite:///"):
        folder = Path(store_uri.removeprefix("sqlite:///")).resolve().parent / "checkpoints"
    else:
        folder = checkpoint_folder(config.train)
    return dataclasses.replace(config, train=dataclasses.replace(config.train, checkpoint_dir=str(folder)))


def check_executor(config: ExperimentConfig, executor: str) -> None:
    """The executor exists and can run these settings (before any work)."""
    if executor not in EXECUTORS:
        raise unknown("executor", executor, EXECUTORS)
    workers = config.resources.workers_per_trial
    if workers > 1 and executor != "ray":
        raise UserError(f"resources.workers_per_trial={workers} trains each trial on {workers} Ray workers: add --executor ray "
                        f"(or leave the setting out and launch with torchrun --nproc_per_node {workers}, docs/distributed.md)")  # fmt: skip


def run_sweep(
    config: ExperimentConfig,
    console: Console,
    tracker: Tracker | None = None,
    shard: tuple[int, int] = (0, 1),
    executor: str = "local",
    ray_address: str | None = None,
) -> list[Outcome]:
    check_executor(config, executor)
    config = pinned_checkpoint_folder(config, tracker.uri if tracker else default_tracking_uri())
    trials = select_shard(plan(config), *shard)  # bad input fails before any run is created
    state = TrialState(config)
    state.read_local_data()  # a broken --data-dir file too, before the store is even opened
    if executor != "ray":
        return _sweep(config, console, tracker, shard, trials, state, None)
    from .ray_executor import RayExecutor, groups_of  # a missing ray, a cluster that cannot be reached: one line now

    # Connected first: the warm workers load the base while this process opens the store.
    remote = RayExecutor(config, tracker.uri if tracker else default_tracking_uri(), ray_address, console, len(groups_of(trials)))
    try:
        return _sweep(config, console, tracker, shard, trials, state, remote)
    finally:
        remote.shutdown()


def _sweep(
    config: ExperimentConfig, console: Console, tracker: Tracker | None, shard: tuple[int, int], trials: list[Trial], state: TrialState, remote
) -> list[Outcome]:
    """The sweep's parent run around its trials, run here or by `remote` (a RayExecutor)."""
    executor = "ray" if remote else "local"
    tracker = distributed.rank_zero_tracker(tracker, config.experiment)
    if distributed.context().is_main:
        for name, why in tracker.reconciled:
            console.print(f"[yellow]marked FAILED[/] {escape(name)} (left RUNNING: {escape(why)})", soft_wrap=True)
    sweep_tags = {"kind": "sweep", "model": config.model, "executor": executor, **state.precision.tags(), **code_version()}
    if config.grid:
        sweep_tags["grid"] = ",".join(config.grid)
    console.print(
        f"[bold]adamole-bench[/] {len(trials)} trials → MLflow {tracker.uri} (experiment '{config.experiment}'), {state.precision.describe()}"
    )
    try:
        sweep_id = tracker.create_run(sweep_name(config.methods, config.tasks, config.model, config.seeds, config.mix, shard), sweep_tags)
    except Exception as err:  # noqa: BLE001 - e.g. a server whose database is read-only
        raise UserError(f"MLflow store {tracker.uri} does not accept new runs ({storage_problem(err) or error_line(err)})") from None
    with tracker.running(sweep_id, strict=False):  # a full disk must not cost the table of what finished
        tracker.log_dict(sweep_id, to_dict(config), "config/experiment.json")
        if remote:
            outcomes = remote.run(trials, sweep_id, tracker)
        else:
            outcomes = _run_here(trials, state, tracker, sweep_id, console)
        _record_summary(tracker, sweep_id, config, outcomes, console)
    return outcomes


def _run_here(trials: list[Trial], state: TrialState, tracker: Tracker, sweep_id: str, console: Console) -> list[Outcome]:
    """The local executor: one trial after another in this process; trials held elsewhere are awaited at the end."""
    outcomes: list[Outcome] = []
    elsewhere: list[Trial] = []
    tags = {"executor": "local"}
    with sweep_progress(console, len(trials)) as progress:  # a terminal only: trials done/left, ETA
        for number, trial in enumerate(trials, start=1):
            progress.trial_started(f"[{number}/{len(trials)}] {escape(trial.name)}")
            outcome = attempt(trial, state, tracker, sweep_id, console, tags)
            if outcome is None:
                console.print("[dim]running in another process: waiting for it at the end[/]")
                elsewhere.append(trial)
            else:
                outcomes.append(outcome)
                progress.trial_done(outcome.status)
        for trial in elsewhere:
            outcomes.append(await_trial(trial, state, tracker, sweep_id, console, tags))
            progress.trial_done(outcomes[-1].status)
    return outcomes


def _record_summary(tracker: Tracker, sweep_id: str, config: ExperimentConfig, outcomes: list[Outcome], console: Console) -> None:
    counts = {s: sum(o.status == s for o in outcomes) for s in ("finished", "skipped", "failed")}
    try:
        tracker.log_metrics(sweep_id, {f"trials/{k}": v for k, v in counts.items()})
    except Exception as err:  # noqa: BLE001 - the results are already in their trial runs
        console.print(f"[yellow]could not record the sweep summary:[/] {escape(storage_problem(err) or error_line(err))}", soft_wrap=True)
        return
    if distributed.context().is_main:
        from ..report.bundle import log_sweep_summary  # matplotlib and friends, only once trials are done

        log_sweep_summary(tracker, sweep_id, config, outcomes, console)
        log_sweep_sensitivity(tracker, sweep_id, config, outcomes, console)
