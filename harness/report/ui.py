"""What `adamole-bench ui` opens: MLflow's compare page for one sweep's trials, where every trial is a
column with its method, task and seed (parameters) and its accuracy and 95% interval (metrics), and
the command that serves the store. docs/ui.md shows the page."""

import json
import sys
from pathlib import Path
from urllib.parse import quote

from ...base.errors import UserError
from ..store import liveness
from ..store.tracking import default_tracking_uri, experiment_page

TRIALS_TAG = "trial_run_ids"  # on a sweep run: its table's trials as a JSON list (harness/report/bundle.py writes it)


def _sweep_run(client, experiment_id: str, sweep: str | None):
    """The sweep asked for (a run id), else the newest sweep of the experiment that finished its table."""
    if sweep is None:
        found = client.search_runs(
            [experiment_id], filter_string=f"tags.kind = 'sweep' and tags.{TRIALS_TAG} != ''", order_by=["attributes.start_time DESC"], max_results=1
        )
        return found[0] if found else None
    try:
        run = client.get_run(sweep)
    except Exception:  # noqa: BLE001 - MLflow raises its own exception types per store for an unknown id
        run = None
    if run is None or run.data.tags.get("kind") != "sweep" or run.info.experiment_id != experiment_id:
        raise UserError(
            f"--sweep {sweep} is not a sweep run of this experiment; copy a sweep's run id from `adamole-bench run` or leave --sweep out for the latest"
        )
    return run


def comparison_page(ui_url: str, experiment: str, uri: str, sweep: str | None = None) -> tuple[str, str] | None:
    """(sweep name, the compare-runs address of its trials); None where the store holds no sweep with a
    table yet (or its list did not fit a tag), when the runs view is the place to start."""
    from mlflow.tracking import MlflowClient  # slow to import: `ui --help` stays quick

    if sweep is not None and uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists():
        raise UserError(f"--sweep {sweep}: the store {uri} does not exist yet; run a sweep first, or leave --sweep out")
    client = MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        if sweep is not None:
            raise UserError(f"the store {uri} has no experiment '{experiment}'; check --experiment, or leave --sweep out")
        return None
    run = _sweep_run(client, found.experiment_id, sweep)
    if run is None or TRIALS_TAG not in run.data.tags:
        return None
    runs, experiments = quote(run.data.tags[TRIALS_TAG], safe=""), quote(json.dumps([found.experiment_id]), safe="")
    return run.info.run_name, f"{ui_url}/#/compare-runs?runs={runs}&experiments={experiments}"


def serve(port: int, experiment: str, sweep: str | None, console) -> int:
    """Print where to look, then run `mlflow ui` on 127.0.0.1 until it exits or is stopped (its exit code)."""
    uri, ui_url = default_tracking_uri(), f"http://127.0.0.1:{port}"
    comparison = comparison_page(ui_url, experiment, uri, sweep)
    console.print(f"MLflow UI for {uri} (Ctrl-C to stop): {experiment_page(ui_url, experiment, uri)}", soft_wrap=True, highlight=False)
    if comparison is None:
        console.print(
            "the comparison: click a sweep run (named methods × tasks · model · seeds); its description is the table (docs/ui.md)", highlight=False
        )
    else:
        name, link = comparison
        console.print(
            f"the trials of sweep '{name}' side by side (method, task, seed, eval/acc and its 95% interval): {link}", soft_wrap=True, highlight=False
        )
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    return liveness.run_supervised(cmd)
