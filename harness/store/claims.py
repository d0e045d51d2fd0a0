"""Who runs a trial: an atomic claim per attempt, so N processes (or N machines) on one store never run it twice.

MLflow has no compare-and-swap on tags or runs, but every backend enforces unique experiment names
(a UNIQUE constraint in the SQL stores, which the tracking server uses too), and a deleted experiment
keeps its name. So attempt n of a trial is claimed by creating the experiment

    adamole-bench.claim/<experiment id>/<config hash>/seed<seed>/attempt<n>

and only one creation of a name can succeed; the losers get RESOURCE_ALREADY_EXISTS. The winner
deletes the claim at once (hidden in the UI, name still reserved) and creates the trial's run, tagged
`claim_attempt=n`. Why no trial runs twice:

1. At most one process ever holds attempt n (the unique name).
2. A process tries attempt n+1 only if one look at the store (runs first, then claims) showed no
   FINISHED run, no live RUNNING run, and attempt n as the newest claim, ended (its run FAILED) or
   stale (its process died before or while running it, see harness/store/liveness.py). A process that saw
   no claim at all tries attempt 0. So if another process holds attempt m: m <= n means m ended
   before n was claimed (by induction), and m > n means claim n+1 existed by then (claim m was made
   after seeing claim m-1), so our creation of n+1 fails. A FAILED run never turns
   RUNNING again; the one gap is a process stalled past the stale timeout on another machine that
   wakes up: its run stays FAILED (it is never turned FINISHED) and is never counted.
3. A sweep tries each trial once, and once more only after waiting for a holder that died; losing
   the race means "someone else has it": the sweep waits for that run and reports it.

tests/test_concurrency.py races processes through a barrier on every trial, on sqlite and on a real
`mlflow server`. `mlflow gc` may purge the deleted claim experiments; the runs' `claim_attempt` tags
then keep the numbering going. The file store (maintenance mode in MLflow 3) does not enforce unique names
atomically and is not supported for concurrent sweeps.
"""

# Imported where used: mlflow (as in tracking.py: the store's names load without MLflow)
import time
from typing import TYPE_CHECKING

from .liveness import process_tags, staleness

if TYPE_CHECKING:  # mlflow is slow to import; here its classes are annotations only
    from mlflow.entities import Experiment

PREFIX = "adamole-bench.claim"
POLL_SECONDS = 2.0


def claim_name(experiment_id: str, identity: str, seed: int, attempt: int) -> str:
    return f"{PREFIX}/{experiment_id}/{identity}/seed{seed}/attempt{attempt}"


def trial_runs(tracker, identity: str, seed: int) -> list:
    """Every active run of one trial, newest first."""
    return tracker.client.search_runs(
        [tracker.experiment_id],
        filter_string=f"tags.identity = '{identity}' and tags.seed = '{seed}' and tags.kind = 'trial'",
        order_by=["attributes.start_time DESC"],
        max_results=1000,
    )


def _claims(tracker, identity: str, seed: int) -> dict[int, "Experiment"]:
    from mlflow.entities import ViewType

    prefix = claim_name(tracker.experiment_id, identity, seed, 0).removesuffix("0")
    found = tracker.client.search_experiments(view_type=ViewType.ALL, filter_string=f"name LIKE '{prefix}%'", max_results=1000)
    return {int(e.name.removeprefix(prefix)): e for e in found if e.name.removeprefix(prefix).isdigit()}


def reconcile_run(tracker, run) -> str | None:
    """Mark one RUNNING run FAILED if its process is gone; returns the reason, or None if it may be alive."""
    reason = staleness(run.data.tags, run.info.start_time)
    if reason is None:
        return None
    mark_stale(tracker, run.info.run_id, reason)
    return reason


def mark_stale(tracker, run_id: str, reason: str) -> None:
    """FAILED with failure=stale: the run's process is gone (found dead here, or reported dead by Ray)."""
    tracker.client.set_tag(run_id, "error", f"stale: {reason}; marked FAILED by pid {process_tags()['pid']} on {process_tags()['host']}")
    tracker.client.set_tag(run_id, "failure", "stale")
    tracker.client.set_terminated(run_id, status="FAILED")


def reconcile(tracker) -> list[tuple[str, str]]:
    """Every stale RUNNING run of the harness (sweep, trial, report, bench) in the experiment → FAILED."""
    runs = tracker.client.search_runs([tracker.experiment_id], filter_string="attributes.status = 'RUNNING'", max_results=10000)
    marked = []
    for run in runs:
        if "kind" not in run.data.tags:
            continue  # not ours: another tool's run is none of our business
        reason = reconcile_run(tracker, run)
        if reason:
            marked.append((run.data.tags.get("mlflow.runName", run.info.run_id), reason))
    return marked


def _observe(tracker, identity: str, seed: int) -> tuple[bool, bool, int]:
    """(finished, held by another live process, the attempt to claim next), all from one look at the store.

    The next attempt must come from the same look as the liveness decision: a process that saw no claim
    must try attempt 0 (and lose to whoever took it), never a number read after someone else's claim.
    """
    runs = trial_runs(tracker, identity, seed)
    if any(run.info.status == "FINISHED" for run in runs):
        return True, False, -1
    if any(run.info.status == "RUNNING" and reconcile_run(tracker, run) is None for run in runs):
        return False, True, -1
    claims = _claims(tracker, identity, seed)  # read after the runs: a claim whose run is newer looks run-less (held)
    attempts = [int(a) for a in (run.data.tags.get("claim_attempt") for run in runs) if a and a.isdigit()]
    latest = max(claims, default=-1)
    if (
        latest >= 0 and latest not in attempts and staleness(claims[latest].tags, claims[latest].creation_time or 0) is None
    ):  # MLflow sets creation_time
        return False, True, -1  # claimed a moment ago, its run not created yet
    return False, False, max([latest, *attempts]) + 1


def claim_trial(tracker, identity: str, seed: int, name: str, tags: dict[str, str], parent_id: str | None = None) -> str | None:
    """The id of a new RUNNING run for this trial that only the caller holds, or None if the trial is
    finished or another live process holds it. The caller runs it inside `tracker.running(run_id)`."""
    from mlflow.exceptions import MlflowException

    finished, held, attempt = _observe(tracker, identity, seed)
    if finished or held:
        return None
    claim = claim_name(tracker.experiment_id, identity, seed, attempt)
    try:
        claim_id = tracker.client.create_experiment(claim, tags={**process_tags(), "heartbeat": str(time.time())})
    except MlflowException as err:
        if err.error_code == "RESOURCE_ALREADY_EXISTS":
            return None  # another process won this attempt
        raise
    tracker.client.delete_experiment(claim_id)  # out of the UI's list; the name stays taken
    trial_tags = {**tags, "kind": "trial", "identity": identity, "seed": str(seed), "claim_attempt": str(attempt)}
    return tracker.create_run(name, trial_tags, parent_id)


def wait_for_trial(tracker, identity: str, seed: int, poll_seconds: float = POLL_SECONDS) -> tuple[str, dict]:
    """Wait while another process runs the trial: ("finished", metrics) or ("failed", {"error", "failure"})."""
    while True:
        finished, held, _ = _observe(tracker, identity, seed)
        if finished:
            return "finished", tracker.completed_trial(identity, seed)
        if not held:
            runs = trial_runs(tracker, identity, seed)  # again: _observe may have just marked one stale
            tags = runs[0].data.tags if runs else {}
            return "failed", {"error": tags.get("error", "the other process left no run"), "failure": tags.get("failure", "crashed")}
        time.sleep(poll_seconds)
