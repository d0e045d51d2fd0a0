"""MLflow: one parent run per `adamole-bench run`, one child run per (method, task, seed).

Uses the client API with explicit run ids (no fluent global state), chunks params/metrics
under MLflow's batch limits, cleans metric names, and ends crashed runs as FAILED rather than
letting MLflow's atexit handler mark them FINISHED. Opening a store checks it first (scheme,
writable, room left), and every open run carries its process and a heartbeat (harness/store/liveness.py),
so a dead run is found and marked FAILED by the next command (harness/store/claims.py).
"""

# Imported where used: mlflow (about 2 s; settings, report readers and `--help` import the store's names without opening one)
import errno
import json
import logging
import os
import re
import shutil
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ...base.errors import Diverged, Pruned, UserError, storage_problem
from ...base.paths import runs_dir
from ...base.upstream import MLFLOW_DB_LOGGER
from . import claims
from .liveness import Heartbeat, Terminated, heartbeat_seconds, process_tags, stale_after_seconds
from .retry import RetryingClient, retry_seconds

MAX_PARAMS_PER_BATCH = 100
MAX_METRICS_PER_BATCH = 1000
MAX_PARAM_LENGTH = 500  # conservative: older servers reject longer values; the full config is an artifact
MIN_FREE_MB = 32  # below this a local store counts as full before any work (adapters and samples take MBs per trial)
# Set on every experiment the harness opens, unless already set (a user's choice stays): MLflow 3 treats an
# experiment without a kind as GenAI and opens it on traces; ours hold training runs. The description
# says where the comparison is (the MLflow UI shows it above the runs).
EXPERIMENT_TAGS = {
    "mlflow.experimentKind": "custom_model_development",
    "mlflow.note.content": (
        "Each `adamole-bench run` is one parent run named by what it compares (`methods × tasks · model · seeds`). "
        "Open it: its description is the comparison table (95% intervals, n, paired tests vs base and best), its "
        "metrics are `<task>/<row>/acc|ci_low|ci_high|n|seeds`, Artifacts → tables/ holds the table as HTML, Markdown, "
        "CSV and JSON. Its children are the trials, one per (method, task, seed)."
    ),
}


def default_tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{runs_dir() / 'mlflow.db'}"


def sweep_name(methods: list[str], tasks: list[str], model: str, seeds: list[int], mix: bool = False, shard: tuple[int, int] = (0, 1)) -> str:
    """A sweep's run name says what it compares: `adamole,mole × copa,boolq · smollm2-135m · 3 seeds`."""

    def listed(names: list, joiner: str = ",") -> str:
        return joiner.join(map(str, names)) if len(names) <= 4 else f"{joiner.join(map(str, names[:3]))}… ({len(names)})"

    trained_on = f"{listed(tasks, '+')} (mix)" if mix else listed(tasks)
    parts = [f"{listed(methods)} × {trained_on}", model, f"{len(seeds)} seed{'s' if len(seeds) > 1 else ''}"]
    if shard[1] > 1:
        parts.append(f"shard {shard[0]}/{shard[1]}")
    return " · ".join(parts)


def experiment_page(ui_url: str, experiment: str, uri: str | None = None) -> str:
    """The UI address of an experiment's runs (MLflow 3.17+ picks GenAI or model training per
    browser, from this `workflowType`, not from the experiment's kind), or of the home page if the
    store has no such experiment yet."""
    from mlflow.tracking import MlflowClient

    try:
        found = MlflowClient(uri or default_tracking_uri()).get_experiment_by_name(experiment)
    except Exception:  # noqa: BLE001 - a store MLflow cannot read: the UI itself will say why
        found = None
    if found is None:
        return ui_url
    return f"{ui_url}/#/experiments/{found.experiment_id}/runs?workflowType=machine_learning"


def run_page(tracker, run_id: str) -> str:
    """A run's page in the MLflow UI: on the tracking server itself, else where `adamole-bench ui` serves it."""
    ui_url = tracker.uri.rstrip("/") if tracker.uri.startswith(("http://", "https://")) else "http://127.0.0.1:5000"
    return f"{ui_url}/#/experiments/{tracker.experiment_id}/runs/{run_id}"


def metric_name(name: str) -> str:
    """MLflow accepts alphanumerics, _ - . space and /; lm-eval's "acc,none" is rejected."""
    return re.sub(r"[^A-Za-z0-9_\-./ ]", "_", name)


def flatten(values: dict, prefix: str = "") -> dict[str, str]:
    flat = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = json.dumps(value) if isinstance(value, (list, tuple)) else str(value)
    return flat


def _check_reachable(uri: str) -> None:
    """Fail in seconds, not after MLflow's minutes of HTTP retries, when a server is down."""
    if not uri.startswith(("http://", "https://")):
        return
    try:
        urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=5)
    except (urllib.error.URLError, OSError) as err:
        raise UserError(
            f"MLflow tracking server {uri} is unreachable ({getattr(err, 'reason', err)}); start it "
            f"(`mlflow server`) or unset MLFLOW_TRACKING_URI to use the local store"
        ) from None


def _store_fix() -> str:
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return "fix MLFLOW_TRACKING_URI (e.g. sqlite:///runs/mlflow.db or http://HOST:PORT) or unset it for the local store"
    return "set ADAMOLE_BENCH_RUNS to a writable folder (default ./runs)"


def _check_local_store(uri: str) -> Path | None:
    """A local sqlite store must be a database file in a writable folder with some room: checked before any work."""
    if not uri.startswith("sqlite:///"):
        return None
    db = Path(uri.removeprefix("sqlite:///"))
    if db.is_dir():
        raise UserError(f"MLflow database {db} is a folder, not a file; {_store_fix()}")
    for parent in db.parents:
        if parent.exists():
            if not parent.is_dir():
                raise UserError(f"runs path {parent} is a file, not a folder; {_store_fix()}")
            break
    try:
        db.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=db.parent) as probe:  # os.access says yes to root on a read-only disk
            probe.write(b"\0" * 65536)
            probe.flush()
            os.fsync(probe.fileno())
    except OSError as err:
        problem = (
            "full" if err.errno in (errno.ENOSPC, errno.EDQUOT) else "read-only" if err.errno == errno.EROFS else f"not writable ({err.strerror})"
        )
        raise UserError(f"MLflow store folder {db.parent} is {problem}; free space there or {_store_fix()}") from None
    free_mb = shutil.disk_usage(db.parent).free / 2**20
    if free_mb < MIN_FREE_MB:
        raise UserError(
            f"MLflow store folder {db.parent} has only {free_mb:.0f} MB free (at least {MIN_FREE_MB} needed); free space or {_store_fix()}"
        )
    return db


@contextmanager
def _exclusive(lock_file: Path | None) -> Iterator[None]:
    """Serialize creating a fresh sqlite store: MLflow's table setup is not safe to run twice at once."""
    if lock_file is None:
        yield
        return
    import fcntl  # POSIX only: importing it at the top would break the module where there is no fcntl

    with open(lock_file, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def failure_kind(err: BaseException) -> str:
    """The `failure` tag of a FAILED run: what ended it, for people and for processes waiting on it."""
    if isinstance(err, Terminated):
        return "terminated"
    if isinstance(err, KeyboardInterrupt):
        return "interrupted"
    if isinstance(err, Diverged):
        return "diverged"
    if isinstance(err, Pruned):
        return "pruned"
    if isinstance(err, UserError):
        return "user"
    return "disk" if storage_problem(err) else "crashed"


@contextmanager
def quiet_artifact_downloads():
    """MLflow draws a progress bar per artifact download: noise in logs and CI for a few small files."""
    previous = os.environ.get("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")
        else:
            os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = previous


class Tracker:
    def __init__(self, experiment: str, uri: str | None = None):
        """Open (or create) the store and experiment, then mark its stale RUNNING runs FAILED (harness/store/claims.py)."""
        self.uri = uri or default_tracking_uri()
        heartbeat_seconds(), stale_after_seconds()  # a bad ADAMOLE_BENCH_*_SECONDS fails here, not in a thread
        self._retry_seconds = retry_seconds()
        _check_reachable(self.uri)
        db = _check_local_store(self.uri)
        # No mlflow.set_tracking_uri: MLflow 3 also writes it to os.environ, so a second Tracker in the
        # same process (e.g. `check` rerunning in a throwaway store) would silently reuse the first store, and child processes inherit it.
        with _exclusive(db.with_name(f".{db.name}.lock") if db else None):
            self.client, found = self._open(experiment, db)
            self.experiment_id = found.experiment_id if found else self._create_experiment(experiment, db)
            for key, value in EXPERIMENT_TAGS.items():
                if key not in (found.tags if found else {}):
                    self.client.set_experiment_tag(self.experiment_id, key, value)
        self._heartbeat = Heartbeat(self._beat)
        self.reconciled = claims.reconcile(self)  # [(run name, why)]: what this store had left RUNNING

    def _open(self, experiment: str, db: Path | None):
        from mlflow.tracking import MlflowClient

        # MLflow logs every database error with its traceback before raising it; we report each in one
        # line (a failed trial, a skipped heartbeat), so its log would only bury that line (e.g. disk full).
        logging.getLogger(MLFLOW_DB_LOGGER).setLevel(logging.CRITICAL)

        try:
            client = RetryingClient(MlflowClient(self.uri), self._retry_seconds)  # a transient server error never kills a sweep (retry.py)
            found = client.get_experiment_by_name(experiment)
        except Exception as err:  # noqa: BLE001 - every failure here is the store's, named in one line
            text = str(err)
            if db and "file is not a database" in text:
                raise UserError(f"{db} is not an MLflow database (corrupt, or another file); move it away or {_store_fix()}") from None
            if "unsupported URI" in text or "registered tracking store" in text:
                why = f"unknown tracking URI scheme '{self.uri.partition('://')[0]}'"
            elif "maintenance mode" in text:
                why = "a plain folder is MLflow's file store, which MLflow 3 no longer supports"
            else:
                why = f"{type(err).__name__}: {(text.splitlines() or [''])[0][:200]}"
            raise UserError(f"MLflow cannot use the tracking store '{self.uri}' ({why}); {_store_fix()}") from None
        if found is not None and found.lifecycle_stage == "deleted":
            raise UserError(
                f"MLflow experiment '{experiment}' was deleted; restore it (`mlflow experiments restore --experiment-id "
                f"{found.experiment_id}` with MLFLOW_TRACKING_URI={self.uri}) or pick another name with experiment=NAME"
            )
        return client, found

    def _create_experiment(self, experiment: str, db: Path | None) -> str:
        from mlflow.exceptions import MlflowException

        artifacts = (db.parent / "artifacts").as_uri() if db else None
        try:
            return self.client.create_experiment(experiment, artifact_location=artifacts)
        except MlflowException as err:
            if err.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            return self.client.get_experiment_by_name(experiment).experiment_id  # another process created it a moment ago

    # --- runs -----------------------------------------------------------------------------------

    def create_run(self, name: str, tags: dict[str, str], parent_id: str | None = None) -> str:
        """A RUNNING run tagged with this process and a first heartbeat."""
        all_tags = {"mlflow.runName": name, **tags, **process_tags(), "heartbeat": str(time.time())}
        if parent_id:
            all_tags["mlflow.parentRunId"] = parent_id
        run = self.client.create_run(self.experiment_id, run_name=name, tags={k: str(v)[:5000] for k, v in all_tags.items()})
        return run.info.run_id

    @contextmanager
    def run(self, name: str, tags: dict[str, str], parent_id: str | None = None, strict: bool = True) -> Iterator[str]:
        """A new run that ends FINISHED, or FAILED (with the error as a tag) if the block raises."""
        with self.running(self.create_run(name, tags, parent_id), strict) as run_id:
            yield run_id

    @contextmanager
    def running(self, run_id: str, strict: bool = True) -> Iterator[str]:
        """Heartbeat an existing RUNNING run (e.g. one from `claim_trial`) while the block runs, then end it.

        FAILED with `error` and `failure` tags if the block raises (KeyboardInterrupt and SIGTERM included:
        nothing is left RUNNING), else FINISHED, unless another process meanwhile marked it FAILED as stale:
        then it stays FAILED. With strict=False a store that cannot record the end (e.g. a full disk) does not
        raise; the run is then reconciled as dead later.
        """
        self.set_tags(run_id, {**process_tags(), "heartbeat": str(time.time())})  # who runs it, if another process claimed it
        self._heartbeat.add(run_id)
        try:
            yield run_id
        except BaseException as err:
            self._heartbeat.remove(run_id)
            try:
                self.set_tags(run_id, {"error": f"{type(err).__name__}: {err}", "failure": failure_kind(err)})
                self.client.set_terminated(run_id, status="FAILED")
            except Exception:  # noqa: BLE001, S110 - keep the original error; the run is reconciled as dead later
                pass
            raise
        self._heartbeat.remove(run_id)
        try:
            if self.client.get_run(run_id).info.status == "RUNNING":
                self.client.set_terminated(run_id, status="FINISHED")
            else:
                self.set_tags(run_id, {"finished_after_marked_stale": "true"})
        except Exception:
            if strict:
                raise

    def _beat(self, run_ids: list[str], now: float) -> None:
        for run_id in run_ids:
            self.client.set_tag(run_id, "heartbeat", str(now))

    def completed_trial(self, identity: str, seed: int) -> dict | None:
        """Metrics of a FINISHED trial with this identity (settings and implementation) and seed, if one exists."""
        runs = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.identity = '{identity}' and tags.seed = '{seed}' and attributes.status = 'FINISHED'",
            max_results=1,
        )
        return dict(runs[0].data.metrics) | {"run_id": runs[0].info.run_id} if runs else None

    def finished_elsewhere(self, config_hash: str, seed: int) -> dict | None:
        """The tags of the newest FINISHED trial with these settings and seed, whatever code produced it."""
        runs = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.config_hash = '{config_hash}' and tags.seed = '{seed}' and tags.kind = 'trial' and attributes.status = 'FINISHED'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        return dict(runs[0].data.tags) if runs else None

    def claim_trial(self, identity: str, seed: int, name: str, tags: dict[str, str], parent_id: str | None = None) -> str | None:
        """A new RUNNING run of this trial held only by the caller, or None if it is finished or held elsewhere
        (see harness/store/claims.py for why two processes can never both get one). Run it inside `running()`."""
        return claims.claim_trial(self, identity, seed, name, tags, parent_id)

    def wait_for_trial(self, identity: str, seed: int) -> tuple[str, dict]:
        """Block while another process runs the trial: ("finished", metrics) or ("failed", {"error", "failure"})."""
        return claims.wait_for_trial(self, identity, seed)

    # --- logging --------------------------------------------------------------------------------

    def log_params(self, run_id: str, params: dict) -> None:
        from mlflow.entities import Param

        items = [Param(k, v[:MAX_PARAM_LENGTH]) for k, v in flatten(params).items()]
        for i in range(0, len(items), MAX_PARAMS_PER_BATCH):
            self.client.log_batch(run_id, params=items[i : i + MAX_PARAMS_PER_BATCH])

    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int = 0) -> None:
        self._log_points(run_id, [(name, value, step) for name, value in metrics.items()])

    def log_history(self, run_id: str, name: str, values: list[float]) -> None:
        """A curve (e.g. the train loss per step), batched."""
        self._log_points(run_id, [(name, value, step) for step, value in enumerate(values, start=1)])

    def _log_points(self, run_id: str, points: list[tuple[str, float, int]]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(metric_name(name), float(value), now, step) for name, value, step in points]
        for i in range(0, len(items), MAX_METRICS_PER_BATCH):
            self.client.log_batch(run_id, metrics=items[i : i + MAX_METRICS_PER_BATCH])

    def set_tags(self, run_id: str, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        items = [RunTag(k, str(v)[:5000]) for k, v in tags.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(run_id, tags=items[i : i + 100])

    def log_dict(self, run_id: str, values: dict | list, artifact_file: str) -> None:
        self.client.log_dict(run_id, values, artifact_file)

    def log_text(self, run_id: str, text: str, artifact_file: str) -> None:
        self.client.log_text(run_id, text, artifact_file)

    def log_figure(self, run_id: str, figure, artifact_file: str) -> None:
        self.client.log_figure(run_id, figure, artifact_file)

    def log_artifacts(self, run_id: str, local_dir: str | Path, artifact_path: str) -> None:
        self.client.log_artifacts(run_id, str(local_dir), artifact_path)
