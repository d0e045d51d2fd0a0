"""`--executor ray`: the sweep's trials (its --mix groups) run concurrently on warm workers across a cluster.

The driver (the `run` process) connects, starts one TrialWorker actor per slot the cluster has for a trial
(`resources.cpus_per_trial` / `gpus_per_trial` each; harness/run/ray_worker.py), which loads the base
while the driver opens the store and skips what is done, then hands each idle worker the next group. A
worker claims and runs its trials exactly as a local sweep would (harness/run/trials.py), logging to the
driver's MLflow store. When a worker dies (SIGKILL, the OOM killer, a lost node), Ray tells the driver,
which marks that group's RUNNING runs FAILED as stale (Ray is the witness that their process is gone, the
rule of harness/store/liveness.py), starts a new worker and gives it the group again, up to
`resources.max_retries` times; the new attempt claims the next attempt number, so a trial still ends
FINISHED once. Ctrl-C or SIGTERM kills the workers and marks what they were running FAILED.
"""

# Imported where used: ray (the optional extra `ray`; the local executor never needs it)
import logging
import os
import signal
import threading
import uuid
from collections import deque
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from ...base.errors import UserError, error_line
from ..settings.config import ExperimentConfig
from ..store.claims import mark_stale
from ..store.liveness import Terminated
from ..store.tracking import Tracker, failure_kind
from .ray_gang import Gang, Unit
from .ray_worker import TrialWorker
from .trial import Trial
from .trials import Outcome

FORWARDED = ("ADAMOLE_BENCH_", "HF_", "MLFLOW_", "TRANSFORMERS_", "TOKENIZERS_PARALLELISM")  # the workers' environment
KILL_WAIT_SECONDS = 30.0  # after Ctrl-C, how long killed workers get to be reported dead before their runs are marked FAILED


def import_ray():
    try:
        import ray
    except ImportError:
        raise UserError('--executor ray needs Ray: pip install -e ".[ray]" (or `make setup`), or leave out --executor ray') from None
    return ray


def absolute_uri(uri: str) -> str:
    """A relative sqlite path names a file relative to the driver's folder, which workers do not share."""
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + str(Path(uri.removeprefix("sqlite:///")).resolve())
    return uri


def groups_of(trials: list[Trial]) -> list[list[tuple[int, Trial]]]:
    """(plan index, trial) per unit of work: one trial each, or the adjacent trials sharing one --mix adapter."""
    groups: list[list[tuple[int, Trial]]] = []
    for index, trial in enumerate(trials):
        if groups and trial.train_tasks != (trial.task,) and groups[-1][-1][1].adapter_key == trial.adapter_key:
            groups[-1].append((index, trial))
        else:
            groups.append([(index, trial)])
    return groups


def _note_sigterm(seen: list[int]) -> None:
    """Ray turns an exception a signal handler raises inside ray.wait into a plain KeyboardInterrupt, so a SIGTERM
    would end the sweep as Ctrl-C (exit 130, not 143): note that it came, then let the handler in place act."""
    if threading.current_thread() is not threading.main_thread():
        return
    previous = signal.getsignal(signal.SIGTERM)

    def note(signum, frame):
        seen.append(signum)
        signal.signal(signal.SIGTERM, previous)
        if callable(previous):
            previous(signum, frame)
        else:
            signal.raise_signal(signum)  # the default action (or none, if ignored), as if we were not here

    signal.signal(signal.SIGTERM, note)


class RayExecutor:
    """Connects and starts the warm workers at once (before the store is opened), so their start overlaps the driver's."""

    def __init__(self, config: ExperimentConfig, uri: str, address: str | None, console: Console, groups: int):
        self.ray = import_ray()
        self.config, self.console = config, console
        self.uri = absolute_uri(uri)
        self._connect(address)
        try:
            self.nodes = self._check_cluster(address)
            resources = config.resources
            # The driver's variables go to each worker as an argument it applies first (harness/run/ray_worker.py): a job's
            # runtime_env breaks Ray Client's server (ray://), and an actor's costs each worker a fresh process.
            self._env = {k: v for k, v in os.environ.items() if k.startswith(FORWARDED)}
            self._worker_class = self.ray.remote(TrialWorker)
            self._options = {
                "num_cpus": resources.cpus_per_trial,
                "num_gpus": resources.gpus_per_trial,
                "max_restarts": 0,
                "max_task_retries": 0,
                "resources": resources.custom or None,
                "accelerator_type": resources.accelerator_type,
            }
            self.workers = [self._start_gang() for _ in range(min(groups, self._slots() // resources.workers_per_trial))]
        except BaseException:
            self.ray.shutdown()
            raise

    def _connect(self, address: str | None) -> None:
        ray = self.ray
        main = threading.current_thread() is threading.main_thread()
        sigterm = signal.getsignal(signal.SIGTERM) if main else None
        where = f"Ray cluster at {address}" if address else "Ray (RAY_ADDRESS, the last `ray start` here, or a new local instance)"
        try:
            ray.init(
                address=address, log_to_driver=False, logging_level=logging.ERROR, include_dashboard=False
            )  # workers' output: Ray's log folder; a local instance needs no dashboard, whose start costs seconds of CPU
        except Exception as err:  # noqa: BLE001 - a bad address, nothing listening, a version mismatch: one line each
            # Ray Client's server sends its traceback, whose last line is the error
            raise UserError(f"cannot connect to {where} ({error_line(err, last=isinstance(err, ConnectionAbortedError))}); "
                            "start one with `ray start --head` or fix --ray-address (auto, HOST:PORT or ray://HOST:10001)") from None  # fmt: skip
        if main and sigterm is not None:
            signal.signal(signal.SIGTERM, sigterm)  # ray.init installs its own (sys.exit), which would skip marking runs FAILED

    def _fits(self, node: dict) -> int:
        """How many trials fit on a node at once."""
        resources, have = self.config.resources, node["Resources"]
        wanted = {"CPU": resources.cpus_per_trial, "GPU": resources.gpus_per_trial, **resources.custom}
        if resources.accelerator_type:
            wanted[f"accelerator_type:{resources.accelerator_type}"] = 0.001  # what Ray asks of a node for an accelerator type
        return min(int(have.get(name, 0) // amount) for name, amount in wanted.items() if amount)

    def _slots(self) -> int:
        return sum(self._fits(node) for node in self.nodes)

    def _check_cluster(self, address: str | None) -> list[dict]:
        """Before any run is created: a trial must fit on some node, and every node must reach the store."""
        resources = self.config.resources
        nodes = [n for n in self.ray.nodes() if n.get("Alive")]
        if not any(self._fits(n) for n in nodes):
            largest = ", ".join(f"{n['Resources'].get('CPU', 0):g} CPU/{n['Resources'].get('GPU', 0):g} GPU" for n in nodes)
            extra = "".join(f", resources.custom.{name}={amount:g}" for name, amount in resources.custom.items())
            extra += f", resources.accelerator_type={resources.accelerator_type}" if resources.accelerator_type else ""
            raise UserError(f"no node of the Ray cluster ({largest}) has resources.cpus_per_trial={resources.cpus_per_trial:g} CPU and "
                            f"resources.gpus_per_trial={resources.gpus_per_trial:g} GPU{extra} for a trial; lower them or add nodes")  # fmt: skip
        slots, size = sum(self._fits(n) for n in nodes), resources.workers_per_trial
        if slots < size:
            raise UserError(f"the Ray cluster has room for {slots} worker(s) of resources.cpus_per_trial={resources.cpus_per_trial:g} CPU and "
                            f"resources.gpus_per_trial={resources.gpus_per_trial:g} GPU at once, but resources.workers_per_trial={size} asks "
                            f"for {size} per trial; lower it or add nodes")  # fmt: skip
        remote = len(nodes) > 1 or (address or "").startswith("ray://")
        if remote and not self.uri.startswith(("http://", "https://")):
            raise UserError(f"MLflow store {self.uri} is on this machine only, but the Ray cluster runs trials elsewhere; start `mlflow server` "
                            "and set MLFLOW_TRACKING_URI=http://HOST:5000 on the driver (docs/distributed.md)")  # fmt: skip
        return nodes

    def _start_gang(self) -> Gang:
        return Gang(self.ray, self._worker_class, self._options, self.config, self.uri, self._env)

    def shutdown(self) -> None:
        self.ray.shutdown()

    # --- the driver -----------------------------------------------------------------------------

    def run(self, trials: list[Trial], sweep_id: str, tracker: Tracker) -> list[Outcome]:
        ray, resources, console = self.ray, self.config.resources, self.console
        self.tracker = tracker
        outcomes: dict[int, Outcome] = {}
        queue: deque = deque()  # (group, tries) not yet handed to a worker
        for group in groups_of(trials):
            left = []
            for index, trial in group:
                done = tracker.completed_trial(trial.identity, trial.seed)
                if done:
                    outcomes[index] = Outcome(trial, "skipped", done)
                    console.print(f"[{len(outcomes)}/{len(trials)}] {escape(trial.name)} [dim]already done, skipped[/] (run {done['run_id']})")
                else:
                    left.append((index, trial))
            if left:
                queue.append((left, 0))
        idle = self.workers[: len(queue)]
        for surplus in self.workers[len(queue) :]:
            surplus.kill()  # more workers than groups left to run: a rerun found most of them done
        pending: dict = {}  # ref -> its Unit (one ref per member of the unit's gang)

        def hand_out() -> None:
            while idle and queue:
                gang, (group, tries) = idle.pop(), queue.popleft()
                token = uuid.uuid4().hex  # tags the runs of this group, so the driver can find them if its worker dies
                unit = Unit(group, tries, token, gang, gang.run_group([t for _, t in group], sweep_id, token))
                pending.update(dict.fromkeys(unit.refs, unit))

        if queue:
            size = resources.workers_per_trial
            gangs = f"{len(idle)} warm worker(s)" if size == 1 else f"{len(idle)} warm gang(s) of {size} workers"
            console.print(f"{len(queue)} Ray tasks on {gangs} ({resources.cpus_per_trial:g} CPU, "
                          f"{resources.gpus_per_trial:g} GPU each), {len(self.nodes)} node(s)")  # fmt: skip
        sigterm: list[int] = []
        try:
            _note_sigterm(sigterm)
            hand_out()
            while pending:
                [ref], _ = ray.wait(list(pending), num_returns=1)
                unit = pending.pop(ref)
                unit.take(ray, ref)
                if not unit.settle(ray, pending):
                    continue
                group, tries, gang = unit.group, unit.tries, unit.gang
                if unit.died and not unit.whole:  # a worker (or its node) died: a new gang, the group again
                    rank, err = unit.died
                    gang.kill()  # the others would wait for it in a collective
                    names = self._mark_dead(unit.token, err, rank)
                    what = f"Ray worker died ({type(err).__name__})" + (f"; marked FAILED: {', '.join(names)}" if names else "")
                    if queue or tries < resources.max_retries:
                        idle.append(self._start_gang())
                    if tries < resources.max_retries:
                        console.print(
                            f"[yellow]{escape(what)}[/]; retry {tries + 1} of resources.max_retries={resources.max_retries}", soft_wrap=True
                        )
                        queue.appendleft((group, tries + 1))
                        hand_out()
                        continue
                    error = f"its Ray worker died {tries + 1} times ({type(err).__name__}); see Ray's worker logs"
                    results, texts, where = self._failed(group, error), None, None
                else:
                    if unit.died or unit.stuck or (unit.crashed and len(gang.members) > 1):
                        gang.kill()  # a member gone, or stuck in a collective: this gang cannot run another unit
                        if queue:
                            idle.append(self._start_gang())
                    else:
                        idle.append(gang)  # a single worker lives on after a crash outside a trial
                    if unit.answer is not None:
                        results, texts, where = unit.answer
                    else:  # the group raised outside a trial: a harness bug
                        why = error_line(unit.crashed, last=True) if unit.crashed else "its Ray task did not answer"
                        self._mark_failed(unit.token, f"crashed: its Ray task raised {why}", "crashed")
                        results, texts, where = self._failed(group, f"Ray task crashed: {why}"), None, None
                hand_out()
                for position, ((index, trial), outcome) in enumerate(zip(group, results)):
                    outcomes[index] = outcome
                    text = escape(texts[position]) if texts else f"{escape(trial.name)} [red]failed:[/] {escape(outcome.error or '')}"
                    console.print(f"[{len(outcomes)}/{len(trials)}] {text}" + (f" [dim]({escape(where)})[/]" if where else ""), soft_wrap=True)
        except KeyboardInterrupt as interrupt:
            if sigterm and not isinstance(interrupt, Terminated):
                interrupt = Terminated()
            self._cancel(pending, interrupt)
            raise interrupt from None
        finally:
            ray.shutdown()
        return [outcomes[index] for index in sorted(outcomes)]

    @staticmethod
    def _failed(group, error: str) -> list[Outcome]:
        return [Outcome(trial, "failed", error=error, failure="crashed") for _, trial in group]

    def _task_runs(self, token: str) -> list:
        """The runs of a group's Ray task that did not finish."""
        runs = self.tracker.client.search_runs([self.tracker.experiment_id], filter_string=f"tags.ray_task = '{token}'", max_results=1000)
        return [run for run in runs if run.info.status in ("RUNNING", "FAILED")]

    def _mark_dead(self, token: str, err: BaseException, rank: int) -> list[str]:
        """The runs of a group whose worker died → FAILED as stale (Ray saw the process go): those still RUNNING,
        and under a gang those its rank 0 marked crashed when a collective lost the dead peer."""
        size, names = self.config.resources.workers_per_trial, []
        for run in self._task_runs(token):
            tags = run.data.tags
            if run.info.status == "FAILED" and (size == 1 or tags.get("failure") != "crashed"):
                continue
            if size == 1:
                why = f"its Ray worker died (pid {tags.get('pid')} on {tags.get('host')}; {type(err).__name__})"
            else:
                why = f"rank {rank} of its {size} Ray workers died ({tags.get('ray_workers')}; {type(err).__name__})"
            if run.info.status == "FAILED":
                why += f"; rank 0 then failed: {tags.get('error')}"
            mark_stale(self.tracker, run.info.run_id, why)
            names.append(tags.get("mlflow.runName", run.info.run_id))
        return names

    def _mark_failed(self, token: str, error: str, failure: str) -> None:
        for run in self._task_runs(token):
            if run.info.status == "RUNNING":
                self.tracker.set_tags(run.info.run_id, {"error": error, "failure": failure})
                self.tracker.client.set_terminated(run.info.run_id, status="FAILED")

    def _cancel(self, pending: dict, interrupt: KeyboardInterrupt) -> None:
        """Ctrl-C/SIGTERM on the driver: kill the busy workers (a running actor task cannot be interrupted), wait
        until Ray reports them gone, then mark what they were running FAILED here."""
        ray = self.ray
        units = list(dict.fromkeys(pending.values()))
        if not units:
            return
        self.console.print(f"[yellow]cancelling {len(units)} Ray task(s)[/]")
        for unit in units:
            unit.gang.kill()
        ray.wait(list(pending), num_returns=len(pending), timeout=KILL_WAIT_SECONDS)
        for unit in units:
            self._mark_failed(
                unit.token,
                f"{type(interrupt).__name__}: {interrupt or 'the driver was interrupted'}; its Ray task was cancelled",
                failure_kind(interrupt),
            )
