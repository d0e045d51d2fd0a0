"""`--executor ray`: each trial (each --mix group) is a Ray task, run concurrently across a cluster.

The driver (the `run` process) plans the sweep, skips what is done, holds the sweep's parent run and
submits one task per group asking for `resources.cpus_per_trial` / `resources.gpus_per_trial`. A worker
claims and runs its trials exactly as a local sweep would (harness/run/trials.py), logging to the driver's
MLflow store. When a worker dies (SIGKILL, the OOM killer, a lost node), Ray tells the driver, which
marks that task's RUNNING runs FAILED as stale (Ray is the witness that their process is gone, the
rule of harness/store/liveness.py) and resubmits the group, up to `resources.max_retries` times; the new
task claims the next attempt, so a trial still ends FINISHED once. Ctrl-C or SIGTERM cancels the
tasks, and what they were running ends FAILED.
"""

import io
import logging
import os
import signal
import socket
import threading
import time
import uuid
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from ...base.errors import UserError, error_line
from ..settings.config import ExperimentConfig
from ..store.claims import mark_stale
from ..store.tracking import Tracker, failure_kind
from .trial import Trial
from .trials import Outcome, TrialState, attempt, await_trial

FORWARDED = ("ADAMOLE_BENCH_", "HF_", "MLFLOW_", "TRANSFORMERS_", "TOKENIZERS_PARALLELISM")  # the workers' environment
CANCEL_GRACE_SECONDS = 30.0  # after Ctrl-C, how long cancelled tasks get to mark their runs FAILED themselves


def import_ray():
    try:
        import ray
    except ImportError:
        raise UserError('--executor ray needs Ray: pip install -e ".[ray]" (or `make setup`), or leave out --executor ray') from None
    return ray


def _absolute(uri: str) -> str:
    """A relative sqlite path names a file relative to the driver's folder, which workers do not share."""
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + str(Path(uri.removeprefix("sqlite:///")).resolve())
    return uri


def groups_of(trials: list[Trial]) -> list[list[tuple[int, Trial]]]:
    """(plan index, trial) per Ray task: one trial each, or the adjacent trials sharing one --mix adapter."""
    groups: list[list[tuple[int, Trial]]] = []
    for index, trial in enumerate(trials):
        if groups and trial.train_tasks != (trial.task,) and groups[-1][-1][1].adapter_key == trial.adapter_key:
            groups[-1].append((index, trial))
        else:
            groups.append([(index, trial)])
    return groups


class RayExecutor:
    def __init__(self, config: ExperimentConfig, tracker: Tracker, address: str | None, console: Console):
        self.ray = import_ray()
        self.config, self.tracker, self.console = config, tracker, console
        self.uri = _absolute(tracker.uri)
        self._connect(address)
        try:
            self.nodes = self._check_cluster(address)
        except BaseException:
            self.ray.shutdown()
            raise

    def _connect(self, address: str | None) -> None:
        ray = self.ray
        main = threading.current_thread() is threading.main_thread()
        sigterm = signal.getsignal(signal.SIGTERM) if main else None
        env = {k: v for k, v in os.environ.items() if k.startswith(FORWARDED)}
        where = f"Ray cluster at {address}" if address else "Ray (RAY_ADDRESS, the last `ray start` here, or a new local instance)"
        try:
            ray.init(
                address=address, log_to_driver=False, logging_level=logging.ERROR, runtime_env={"env_vars": env}
            )  # workers' output: Ray's log folder
        except Exception as err:  # noqa: BLE001 - a bad address, nothing listening, a version mismatch: one line each
            raise UserError(f"cannot connect to {where} ({type(err).__name__}: {(str(err).splitlines() or [''])[0][:200]}); "
                            "start one with `ray start --head` or fix --ray-address (auto, HOST:PORT or ray://HOST:10001)") from None  # fmt: skip
        if main and sigterm is not None:
            signal.signal(signal.SIGTERM, sigterm)  # ray.init installs its own (sys.exit), which would skip marking runs FAILED

    def _check_cluster(self, address: str | None) -> list[dict]:
        """Before any run is created: a trial must fit on some node, and every node must reach the store."""
        resources = self.config.resources
        nodes = [n for n in self.ray.nodes() if n.get("Alive")]
        fits = [
            n for n in nodes if n["Resources"].get("CPU", 0) >= resources.cpus_per_trial and n["Resources"].get("GPU", 0) >= resources.gpus_per_trial
        ]
        if not fits:
            largest = ", ".join(f"{n['Resources'].get('CPU', 0):g} CPU/{n['Resources'].get('GPU', 0):g} GPU" for n in nodes)
            raise UserError(f"no node of the Ray cluster ({largest}) has resources.cpus_per_trial={resources.cpus_per_trial:g} CPU and "
                            f"resources.gpus_per_trial={resources.gpus_per_trial:g} GPU for a trial; lower them or add nodes")  # fmt: skip
        remote = len(nodes) > 1 or (address or "").startswith("ray://")
        if remote and not self.uri.startswith(("http://", "https://")):
            raise UserError(f"MLflow store {self.uri} is on this machine only, but the Ray cluster runs trials elsewhere; start `mlflow server` "
                            "and set MLFLOW_TRACKING_URI=http://HOST:5000 on the driver (docs/distributed.md)")  # fmt: skip
        return nodes

    # --- the driver -----------------------------------------------------------------------------

    def run(self, trials: list[Trial], sweep_id: str) -> list[Outcome]:
        ray, resources, console = self.ray, self.config.resources, self.console
        outcomes: dict[int, Outcome] = {}
        todo = []
        for group in groups_of(trials):
            left = []
            for index, trial in group:
                done = self.tracker.completed_trial(trial.identity, trial.seed)
                if done:
                    outcomes[index] = Outcome(trial, "skipped", done)
                    console.print(f"[{len(outcomes)}/{len(trials)}] {escape(trial.name)} [dim]already done, skipped[/] (run {done['run_id']})")
                else:
                    left.append((index, trial))
            if left:
                todo.append(left)
        task = ray.remote(run_group).options(
            num_cpus=resources.cpus_per_trial, num_gpus=resources.gpus_per_trial, max_retries=0, retry_exceptions=False
        )
        pending: dict = {}

        def submit(group, tries: int) -> None:
            token = uuid.uuid4().hex  # tags the runs of this task, so the driver can find them if its worker dies
            ref = task.remote([t for _, t in group], self.uri, self.config.experiment, sweep_id, token)
            pending[ref] = (group, tries, token)

        for group in todo:
            submit(group, 0)
        if todo:
            console.print(
                f"{len(todo)} Ray tasks ({resources.cpus_per_trial:g} CPU, {resources.gpus_per_trial:g} GPU each) on {len(self.nodes)} node(s)"
            )
        try:
            while pending:
                [ref], _ = ray.wait(list(pending), num_returns=1)
                group, tries, token = pending.pop(ref)
                try:
                    results, texts, worker = ray.get(ref)
                except ray.exceptions.RayTaskError as err:  # the task itself raised outside a trial: a harness bug
                    self._mark_failed(token, f"crashed: its Ray task raised {error_line(err, last=True)}", "crashed")
                    results, texts, worker = self._failed(group, f"Ray task crashed: {error_line(err, last=True)}"), None, None
                except ray.exceptions.RayError as err:  # the worker (or its node) died: retry the group elsewhere
                    names = self._mark_dead(token, err)
                    what = f"Ray worker died ({type(err).__name__})" + (f"; marked FAILED: {', '.join(names)}" if names else "")
                    if tries < resources.max_retries:
                        console.print(
                            f"[yellow]{escape(what)}[/]; retry {tries + 1} of resources.max_retries={resources.max_retries}", soft_wrap=True
                        )
                        submit(group, tries + 1)
                        continue
                    results, texts, worker = (
                        self._failed(group, f"its Ray worker died {tries + 1} times ({type(err).__name__}); see Ray's worker logs"),
                        None,
                        None,
                    )
                for position, ((index, trial), outcome) in enumerate(zip(group, results)):
                    outcomes[index] = outcome
                    text = escape(texts[position]) if texts else f"{escape(trial.name)} [red]failed:[/] {escape(outcome.error or '')}"
                    where = f" [dim]({escape(worker)})[/]" if worker else ""
                    console.print(f"[{len(outcomes)}/{len(trials)}] {text}{where}", soft_wrap=True)
        except KeyboardInterrupt as interrupt:
            self._cancel(pending, interrupt)
            raise
        finally:
            ray.shutdown()
        return [outcomes[index] for index in sorted(outcomes)]

    @staticmethod
    def _failed(group, error: str) -> list[Outcome]:
        return [Outcome(trial, "failed", error=error, failure="crashed") for _, trial in group]

    def _task_runs(self, token: str) -> list:
        return self.tracker.client.search_runs(
            [self.tracker.experiment_id], filter_string=f"tags.ray_task = '{token}' and attributes.status = 'RUNNING'", max_results=1000
        )

    def _mark_dead(self, token: str, err: BaseException) -> list[str]:
        """The RUNNING runs of a task whose worker died → FAILED as stale (Ray saw the process go)."""
        names = []
        for run in self._task_runs(token):
            tags = run.data.tags
            mark_stale(self.tracker, run.info.run_id, f"its Ray worker died (pid {tags.get('pid')} on {tags.get('host')}; {type(err).__name__})")
            names.append(tags.get("mlflow.runName", run.info.run_id))
        return names

    def _mark_failed(self, token: str, error: str, failure: str) -> None:
        for run in self._task_runs(token):
            self.tracker.set_tags(run.info.run_id, {"error": error, "failure": failure})
            self.tracker.client.set_terminated(run.info.run_id, status="FAILED")

    def _cancel(self, pending: dict, interrupt: KeyboardInterrupt) -> None:
        """Ctrl-C/SIGTERM on the driver: interrupt every task (its trial ends FAILED in the worker), then
        kill those that do not stop within the grace period and mark their runs FAILED here."""
        ray = self.ray
        if not pending:
            return
        self.console.print(f"[yellow]cancelling {len(pending)} Ray task(s)[/]")
        for ref in pending:
            ray.cancel(ref)
        _, stuck = ray.wait(list(pending), num_returns=len(pending), timeout=CANCEL_GRACE_SECONDS)
        for ref in stuck:
            try:
                ray.cancel(ref, force=True)
            except Exception:  # noqa: BLE001, S110 - it may have finished meanwhile
                pass
        for _, _, token in pending.values():
            self._mark_failed(
                token, f"{type(interrupt).__name__}: {interrupt or 'the driver was interrupted'}; its Ray task was cancelled", failure_kind(interrupt)
            )


# --- the worker -----------------------------------------------------------------------------------

_cached: dict = {}  # per worker process: the tracker and the loaded base model outlive one task


def run_group(trials: list[Trial], uri: str, experiment: str, sweep_id: str, token: str) -> tuple[list[Outcome], list[str], str]:
    """One Ray task: the trials of one group, each skipped, claimed or awaited exactly as in a local sweep.
    Returns their outcomes, what each printed (plain text), and where it ran."""
    from ...base.paths import offline_defaults

    offline_defaults()
    tracker = _cached.get(("tracker", uri, experiment)) or _cached.setdefault(("tracker", uri, experiment), Tracker(experiment, uri=uri))
    settings = trials[0].settings
    assert settings is not None  # planned trials carry their settings (sweep.plan)
    key = ("state", settings.model, settings.precision, settings.trust_remote_code, settings.data_dir)
    state = _cached.get(key) or _cached.setdefault(key, TrialState(settings))
    tags = {"executor": "ray", "ray_task": token}
    outcomes, texts = [], []
    try:
        for trial in trials:
            out = io.StringIO()
            console = Console(file=out, width=200, color_system=None, highlight=False, soft_wrap=True)
            console.print(escape(trial.name), end=" ")
            outcome = attempt(trial, state, tracker, sweep_id, console, tags)
            if outcome is None:
                console.print("[dim]running in another process: waiting for it[/]")
                outcome = await_trial(trial, state, tracker, sweep_id, console, tags)
            outcomes.append(outcome)
            texts.append(out.getvalue().rstrip())
    finally:
        state.forget_adapter()
    return outcomes, texts, f"pid {os.getpid()} on {socket.gethostname()}, {time.strftime('%H:%M:%S')}"
