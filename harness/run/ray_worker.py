"""The worker side of `--executor ray`: TrialWorker actors, warm for the whole sweep, one rank each of the
gang that runs a unit (harness/run/ray_gang.py; one worker alone unless resources.workers_per_trial > 1).

An actor is started as soon as the driver connects. It takes the driver's variables first (HF_*, MLFLOW_*, ...:
what those libraries read when they load), then imports the harness and loads the base for the sweep's model
and precision while the driver still opens the store; rank 0 also opens the store and imports lm-eval, which
only it uses. Then it runs unit after unit on that one base, putting each trial's adapter on and taking it off
as the local executor does (harness/run/trial_state.py). The ranks of a gang train each trial as one
torch.distributed process group (harness/train/distributed.py, as under torchrun): rank 0 claims, evaluates
and records, the others train their slice of each global batch. It leaves with the driver: Ray ends a job's
actors when its driver goes, and a worker whose raylet died (the driver's own local instance, SIGKILLed)
exits at once.

This module imports no more than the standard library at its top: Ray imports it to start the actor, before
the driver's variables are set.
"""

import io
import os
import socket
import threading
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..settings.config import ExperimentConfig
    from ..store.tracking import Tracker
    from .trial import Trial
    from .trials import Outcome

ORPHAN_POLL_SECONDS = 0.5  # how soon a worker whose raylet died notices it


def _exit_when_orphaned() -> None:
    """Ray notices a dead raylet only after many seconds (up to ~25 s here) while the worker trains on;
    the parent changing (re-parented to init) is certain and immediate."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(ORPHAN_POLL_SECONDS)
        os._exit(1)  # its RUNNING run is then stale: the next run/report marks it FAILED (harness/store/liveness.py)

    threading.Thread(target=watch, name="orphan-watch", daemon=True).start()


def _where() -> str:
    return f"pid {os.getpid()} on {socket.gethostname()}"


class TrialWorker:
    def __init__(self, config: "ExperimentConfig", uri: str, env: dict[str, str], rank: int = 0, world_size: int = 1):
        os.environ.update(env)  # a runtime_env would do the same at the cost of a fresh worker process per actor
        _exit_when_orphaned()
        from ...base.paths import offline_defaults

        offline_defaults()
        from .trials import TrialState

        self.state, self.uri, self.rank, self.world_size = TrialState(config), uri, rank, world_size
        self._tracker: Tracker | None = None
        self._joined, self._ranks = world_size == 1, _where()  # _ranks: every rank's pid and host once joined
        # The store's first open imports MLflow's database layer (seconds; the driver opens it meanwhile, under its lock).
        for warm_up in (self.tracker, self.state.base) if rank == 0 else (self.state.base,):
            try:
                warm_up()
            except Exception:  # noqa: BLE001 - the first unit meets the same error again and records it as a local sweep does
                continue
        if rank == 0:
            import lm_eval.evaluator  # noqa: F401 - slow to import: paid now, not by the first trial's evaluation

    def tracker(self) -> "Tracker":
        if self._tracker is None:
            from ..store.tracking import Tracker

            self._tracker = Tracker(self.state.config.experiment, uri=self.uri)
        return self._tracker

    def rendezvous(self) -> tuple[str, int]:
        """Rank 0's address and a free port on it, where the gang's process group meets."""
        import ray

        address = ray.util.get_node_ip_address()
        with socket.socket() as sock:
            sock.bind((address, 0))
            return address, sock.getsockname()[1]

    def _join(self, rendezvous: tuple[str, int]) -> str:
        """Form the gang's process group (blocks until every rank is here); every rank's pid and host, in rank order."""
        import torch.distributed

        from ..train import distributed

        distributed.join(self.rank, self.world_size, *rendezvous)
        where: list = [None] * self.world_size
        torch.distributed.all_gather_object(where, _where())
        self._joined = True
        return ", ".join(where)

    def run_group(
        self, trials: "list[Trial]", sweep_id: str, token: str, rendezvous: tuple[str, int] | None = None
    ) -> "tuple[list[Outcome], list[str], str]":
        """The trials of one unit, each skipped, claimed or awaited exactly as in a local sweep (on every rank of
        the gang; rank 0 records). Returns their outcomes, what each printed (plain text), and where it ran."""
        from rich.console import Console
        from rich.markup import escape

        from ..train import distributed
        from .trials import attempt, await_trial

        tags = {"executor": "ray", "ray_task": token}
        if not self._joined:
            assert rendezvous is not None  # the gang passes rank 0's address with every unit (harness/run/ray_gang.py)
            self._ranks = self._join(rendezvous)
        if self.world_size > 1:
            tags["ray_workers"] = self._ranks  # who trained it, rank 0 first
        state = self.state
        tracker = distributed.rank_zero_tracker(self.tracker() if self.rank == 0 else None, state.config.experiment)
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
        where = _where() if self.world_size == 1 else f"{self.world_size} workers: {self._ranks}"
        return outcomes, texts, f"{where}, {time.strftime('%H:%M:%S')}"
