"""MLflow: one parent run per `adamole-bench run`, one child run per (method, task, seed).

Uses the client API with explicit run ids (no fluent global state), chunks params/metrics
under MLflow's batch limits, cleans metric names, and ends crashed runs as FAILED rather than
letting MLflow's atexit handler mark them FINISHED.
"""

import json
import os
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import UserError
from .paths import runs_dir

MAX_PARAMS_PER_BATCH = 100
MAX_METRICS_PER_BATCH = 1000
MAX_PARAM_LENGTH = 500  # conservative: older servers reject longer values; the full config is an artifact


def default_tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{runs_dir() / 'mlflow.db'}"


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
    import urllib.error
    import urllib.request

    try:
        urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=5)
    except (urllib.error.URLError, OSError) as err:
        raise UserError(
            f"MLflow tracking server {uri} is unreachable ({getattr(err, 'reason', err)}); start it "
            f"(`mlflow server`) or unset MLFLOW_TRACKING_URI to use the local store"
        ) from None


class Tracker:
    def __init__(self, experiment: str, uri: str | None = None):
        from mlflow.tracking import MlflowClient

        self.uri = uri or default_tracking_uri()
        _check_reachable(self.uri)
        local = self.uri.startswith("sqlite:///")
        if local:
            Path(self.uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        # No mlflow.set_tracking_uri: MLflow 3 also writes it to os.environ, so a second Tracker in the
        # same process (e.g. `check` rerunning in a throwaway store) would silently reuse the first store, and child processes inherit it.
        self.client = MlflowClient(self.uri)
        try:
            found = self.client.get_experiment_by_name(experiment)
        except Exception as err:
            raise UserError(
                f"MLflow tracking store {self.uri} is unreachable ({type(err).__name__}); start the server "
                f"or unset MLFLOW_TRACKING_URI to use the local store"
            ) from None
        if found is None:
            artifacts = (Path(self.uri.removeprefix("sqlite:///")).parent / "artifacts").as_uri() if local else None
            self.experiment_id = self.client.create_experiment(experiment, artifact_location=artifacts)
        else:
            self.experiment_id = found.experiment_id

    # --- runs -----------------------------------------------------------------------------------

    @contextmanager
    def run(self, name: str, tags: dict[str, str], parent_id: str | None = None) -> Iterator[str]:
        """A run that ends FINISHED, or FAILED (with the error as a tag) if the block raises."""
        all_tags = {"mlflow.runName": name, **tags}
        if parent_id:
            all_tags["mlflow.parentRunId"] = parent_id
        run = self.client.create_run(self.experiment_id, run_name=name, tags={k: str(v)[:5000] for k, v in all_tags.items()})
        run_id = run.info.run_id
        try:
            yield run_id
        except BaseException as err:  # KeyboardInterrupt included: nothing is left RUNNING
            self.client.set_tag(run_id, "error", f"{type(err).__name__}: {err}"[:5000])
            self.client.set_terminated(run_id, status="FAILED")
            raise
        self.client.set_terminated(run_id, status="FINISHED")

    def completed_trial(self, config_hash: str, seed: int) -> dict | None:
        """Metrics of a FINISHED trial with this config hash and seed, if one exists."""
        runs = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.config_hash = '{config_hash}' and tags.seed = '{seed}' and attributes.status = 'FINISHED'",
            max_results=1,
        )
        return dict(runs[0].data.metrics) | {"run_id": runs[0].info.run_id} if runs else None

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
