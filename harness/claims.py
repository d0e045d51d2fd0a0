"""Who runs a trial: an atomic claim per attempt, so N processes (or N machines) on one store never run it twice.

MLflow has no compare-and-swap on tags or runs, but every backend enforces unique experiment names
(a UNIQUE constraint in the SQL stores, which the tracking server uses too), and a deleted experiment
keeps its name. So attempt n of a trial is claimed by creating the experiment

    adamole-bench.claim/<experiment id>/<config hash>/seed<seed>/attempt<n>

and only one creation of a name can succeed; the losers get RESOURCE_ALREADY_EXISTS. The winner
deletes the claim at once (hidden in the UI, name still reserved) and creates the trial's run, tagged
`claim_attempt=n`. Why no trial runs twice:

1. At most one process ever holds attempt n (the unique name).
2. A process tries attempt n+1 only after seeing no FINISHED run, no live RUNNING run, and attempt n
   either ended (its run is FAILED) or is stale (its process died before or while running it, see
   harness/liveness.py). A FAILED run never becomes RUNNING again, so attempts n and n+1 never run
   together, except if a process stalls past the stale timeout on another machine and wakes up: its
   run stays FAILED (it is never turned FINISHED) and is never counted.
3. Each process tries each trial at most once per sweep; losing the race means "someone else has it".

`mlflow gc` may purge the deleted claim experiments; the runs' `claim_attempt` tags then keep the
numbering going. The file store (maintenance mode in MLflow 3) does not enforce unique names
atomically and is not supported for concurrent sweeps.
"""

import time

from .liveness import process_tags, staleness

PREFIX = "adamole-bench.claim"
POLL_SECONDS = 2.0


def claim_name(experiment_id: str, config_hash: str, seed: int, attempt: int) -> str:
    return f"{PREFIX}/{experiment_id}/{config_hash}/seed{seed}/attempt{attempt}"


def trial_runs(tracker, config_hash: str, seed: int) -> list:
    """Every active run of one trial, newest first."""
    return tracker.client.search_runs(
        [tracker.experiment_id],
        filter_string=f"tags.config_hash = '{config_hash}' and tags.seed = '{seed}' and tags.kind = 'trial'",
        order_by=["attributes.start_time DESC"],
        max_results=1000,
    )


def _claims(tracker, config_hash: str, seed: int) -> dict[int, object]:
    from mlflow.entities import ViewType

    prefix = claim_name(tracker.experiment_id, config_hash, seed, 0).removesuffix("0")
    found = tracker.client.search_experiments(view_type=ViewType.ALL, filter_string=f"name LIKE '{prefix}%'", max_results=1000)
    return {int(e.name.removeprefix(prefix)): e for e in found if e.name.removeprefix(prefix).isdigit()}


def reconcile_run(tracker, run) -> str | None:
    """Mark one RUNNING run FAILED if its process is gone; returns the reason, or None if it may be alive."""
    reason = staleness(run.data.tags, run.info.start_time)
    if reason is None:
        return None
    tracker.client.set_tag(run.info.run_id, "error", f"stale: {reason}; marked FAILED by pid {process_tags()['pid']} on {process_tags()['host']}")
    tracker.client.set_tag(run.info.run_id, "failure", "stale")
    tracker.client.set_terminated(run.info.run_id, status="FAILED")
    return reason


def reconcile(tracker) -> list[tuple[str, str]]:
    """Every stale RUNNING run of the harness (sweep, trial, report, bench) in the experiment → FAILED."""
    runs = tracker.client.search_runs(
        [tracker.experiment_id], filter_string="attributes.status = 'RUNNING'", max_results=10000
    )
    marked = []
    for run in runs:
        if "kind" not in run.data.tags:
            continue  # not ours: another tool's run is none of our business
        reason = reconcile_run(tracker, run)
        if reason:
            marked.append((run.data.tags.get("mlflow.runName", run.info.run_id), reason))
    return marked


def _pending(tracker, config_hash: str, seed: int, runs: list) -> bool:
    """Whether another live process holds this trial: a fresh RUNNING run, or a fresh claim with no run yet."""
    if any(run.info.status == "RUNNING" and reconcile_run(tracker, run) is None for run in runs):
        return True
    claims = _claims(tracker, config_hash, seed)
    if not claims:
        return False
    latest = max(claims)
    with_runs = {run.data.tags.get("claim_attempt") for run in runs}
    return str(latest) not in with_runs and staleness(claims[latest].tags, claims[latest].creation_time) is None


def claim_trial(tracker, config_hash: str, seed: int, name: str, tags: dict[str, str], parent_id: str | None = None) -> str | None:
    """The id of a new RUNNING run for this trial that only the caller holds, or None if the trial is
    finished or another live process holds it. The caller runs it inside `tracker.running(run_id)`."""
    from mlflow.exceptions import MlflowException

    runs = trial_runs(tracker, config_hash, seed)
    if any(run.info.status == "FINISHED" for run in runs) or _pending(tracker, config_hash, seed, runs):
        return None
    attempts = [int(a) for a in (run.data.tags.get("claim_attempt") for run in runs) if a and a.isdigit()]
    attempt = max([*_claims(tracker, config_hash, seed), *attempts], default=-1) + 1
    claim = claim_name(tracker.experiment_id, config_hash, seed, attempt)
    try:
        claim_id = tracker.client.create_experiment(claim, tags={**process_tags(), "heartbeat": str(time.time())})
    except MlflowException as err:
        if err.error_code == "RESOURCE_ALREADY_EXISTS":
            return None  # another process won this attempt
        raise
    tracker.client.delete_experiment(claim_id)  # out of the UI's list; the name stays taken
    trial_tags = {**tags, "kind": "trial", "config_hash": config_hash, "seed": str(seed), "claim_attempt": str(attempt)}
    return tracker.create_run(name, trial_tags, parent_id)


def wait_for_trial(tracker, config_hash: str, seed: int, poll_seconds: float = POLL_SECONDS) -> tuple[str, dict]:
    """Wait while another process runs the trial: ("finished", metrics) or ("failed", {"error", "failure"})."""
    while True:
        done = tracker.completed_trial(config_hash, seed)
        if done:
            return "finished", done
        if not _pending(tracker, config_hash, seed, trial_runs(tracker, config_hash, seed)):
            done = tracker.completed_trial(config_hash, seed)  # it may have finished since the first look
            if done:
                return "finished", done
            runs = trial_runs(tracker, config_hash, seed)  # again: _pending may have just marked one stale
            tags = runs[0].data.tags if runs else {}
            return "failed", {"error": tags.get("error", "the other process left no run"), "failure": tags.get("failure", "crashed")}
        time.sleep(poll_seconds)
