"""The worker side of `--executor ray`: one TrialWorker actor per slot of the cluster, warm for the whole sweep.

An actor is started as soon as the driver connects, so its process imports the harness, loads the base for
the sweep's model and precision and imports lm-eval while the driver still opens the store; then it runs
group after group on that one base, putting each trial's adapter on and taking it off as the local
executor does (harness/run/trial_state.py). It leaves with the driver: Ray ends a job's actors when its
driver goes, and a worker whose raylet died (the driver's own local instance, SIGKILLed) exits at once.
"""

import io
import os
import socket
import threading
import time

from rich.console import Console
from rich.markup import escape

from ...base.paths import offline_defaults
from ..settings.config import ExperimentConfig
from ..store.tracking import Tracker
from .trial import Trial
from .trials import Outcome, TrialState, attempt, await_trial

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


class TrialWorker:
    def __init__(self, config: ExperimentConfig, uri: str):
        _exit_when_orphaned()
        offline_defaults()
        self.state, self.uri = TrialState(config), uri
        self._tracker: Tracker | None = None
        # The store's first open imports MLflow's database layer (seconds; the driver opens it meanwhile, under its lock).
        for warm_up in (self.tracker, self.state.base):
            try:
                warm_up()
            except Exception:  # noqa: BLE001 - the first group meets the same error again and records it as a local sweep does
                continue
        import lm_eval.evaluator  # noqa: F401 - slow to import: paid now, not by the first trial's evaluation

    def tracker(self) -> Tracker:
        if self._tracker is None:
            self._tracker = Tracker(self.state.config.experiment, uri=self.uri)
        return self._tracker

    def run_group(self, trials: list[Trial], sweep_id: str, token: str) -> tuple[list[Outcome], list[str], str]:
        """The trials of one group, each skipped, claimed or awaited exactly as in a local sweep.
        Returns their outcomes, what each printed (plain text), and where it ran."""
        tracker, state = self.tracker(), self.state
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
