"""`adamole-bench export RUN_ID DIR`: a trial's adapter as a self-describing folder to share or publish.

DIR gets the adapter (PEFT layout for every built-in method), a README.md model card (the run's
config, scores with n and interval, data fingerprints, code version, how to load it) and, for LoRA
with --merged, the full merged model in DIR/merged. Everything is checked before any work, and DIR
appears only when complete (written beside it, then renamed).
"""

# Imported where used: mlflow (the export's names load without MLflow, as the store's do)
import json
import re
import shutil
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

from ...base.errors import UserError
from ...base.upstream import set_name_or_path
from ...methods.registry import PEFT_CONFIG, all_methods
from ..model.adapters import download_run_artifact, load_adapter, read_metadata, record_loadable_base
from ..settings.config import check_experiment_name
from ..store.tracking import _check_reachable, default_tracking_uri

if TYPE_CHECKING:  # mlflow is slow to import; here its classes are annotations only
    from mlflow.entities import Run

Z_95 = 1.959963984540054  # two-sided 95% normal quantile
TRIAL_SPEC = re.compile(r"^(?P<method>[\w.-]+)/(?P<task>[\w.-]+)/(?:seed)?(?P<seed>\d+)$")


RUN_ID = re.compile(r"[a-zA-Z0-9][\w\-]{0,255}")  # MLflow's run id rule: no store is opened for a typo


def export_trial(trial: str, folder: Path, merged: bool, experiment: str, model: str | None, config_hash: str | None) -> tuple[str, list[Path]]:
    """`export RUN_ID|METHOD/TASK/SEED FOLDER`: the trial's run id and the files written."""
    if not TRIAL_SPEC.match(trial) and not RUN_ID.fullmatch(trial):
        raise UserError(
            f"'{trial}' is neither an MLflow run id (letters, digits, _ and -, e.g. 3f2a9c1b0d4e4f6a8b7c6d5e4f3a2b1c) nor method/task/seed (e.g. lora/copa/0); copy a trial's run id from the `run` output or `adamole-bench ui`"
        )
    check_experiment_name(experiment, "--experiment")
    run_id = find_trial(trial, experiment, model, config_hash)
    return run_id, export_run(run_id, folder, merged=merged)


def find_trial(spec: str, experiment: str, model: str | None = None, config_hash: str | None = None, tracking_uri: str | None = None) -> str:
    """A run id as given, or the one FINISHED trial named `method/task/seed` (`lora/copa/0`, `lora/copa/seed0`)
    in the experiment; several configs or implementations of it must be told apart by a filter."""
    match = TRIAL_SPEC.match(spec)
    if not match:
        return spec
    from mlflow.tracking import MlflowClient

    store = tracking_uri or default_tracking_uri()
    _check_reachable(store)
    client = MlflowClient(store)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        raise UserError(f"no experiment '{experiment}' in MLflow store {store}; pass --experiment, or a run id")
    wanted = {"kind": "trial", **match.groupdict(), **({"model": model} if model else {})}
    conditions = [f"tags.{key} = '{value}'" for key, value in wanted.items()] + ["attributes.status = 'FINISHED'"]
    runs: list[Run] = client.search_runs([found.experiment_id], " and ".join(conditions), order_by=["attributes.start_time DESC"], max_results=1000)
    runs = [r for r in runs if not config_hash or r.data.tags.get("config_hash", "").startswith(config_hash)]
    if not runs:
        raise UserError(
            f"no FINISHED trial {spec} in experiment '{experiment}'"
            + (f" for model {model}" if model else "")
            + "; `adamole-bench report` lists what is there"
        )
    newest: dict[str, Run] = {}
    for run in runs:  # a trial recorded twice with one identity: the newest counts, as in report
        newest.setdefault(run.data.tags.get("identity") or run.data.tags.get("config_hash", ""), run)
    if len(newest) > 1:
        choices = "; ".join(
            f"{r.info.run_id} ({r.data.tags.get('model')}, config {r.data.tags.get('config_hash')}, code {r.data.tags.get('implementation', '?')})"
            for r in newest.values()
        )
        raise UserError(f"{spec} names {len(newest)} trials: {choices}; pass one run id, or --model / --config-hash")
    return next(iter(newest.values())).info.run_id


def export_run(run_id: str, target: str | Path, merged: bool = False, tracking_uri: str | None = None) -> list[Path]:
    """Write the run's adapter, model card and (LoRA, `merged`) merged model to `target`; returns the files."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    target = Path(target).expanduser()
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise UserError(f"{target} already exists and is not an empty folder; choose a new DIR (export never overwrites)")
    store = tracking_uri or default_tracking_uri()
    _check_reachable(store)
    client = MlflowClient(store)
    try:
        run = client.get_run(run_id)
    except MlflowException:
        raise UserError(f"no run '{run_id}' in MLflow store {store}; copy a trial's run id from `adamole-bench ui` or the sweep output") from None
    tags = run.data.tags
    if tags.get("kind") != "trial" or run.info.status != "FINISHED":
        raise UserError(f"run {run_id} is a {run.info.status} {tags.get('kind', 'unknown')} run; export a FINISHED trial run")
    method = tags.get("method", "")
    mergeable = [name for name, method_class in all_methods().items() if method_class.mergeable]
    if merged and method not in mergeable:
        raise UserError(
            f"--merged is for {', '.join(mergeable)} only: a {method} adapter routes each token to different experts, so it cannot be folded into dense weights"
        )
    if not client.list_artifacts(run_id, "adapter"):
        raise UserError(f"run {run_id} saved no adapter (save_adapters: false, or an untrained method); rerun it with save_adapters=true")

    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / f".{target.name}.partial-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        adapter = download_run_artifact(f"runs:/{run_id}/adapter", staging / "download", store)
        for file in adapter.iterdir():
            shutil.move(str(file), staging / file.name)
        shutil.rmtree(staging / "download")
        trial_config = json.loads(download_run_artifact(f"runs:/{run_id}/config/trial.json", staging / "download", store).read_text())
        shutil.rmtree(staging / "download")
        loadable_base = record_loadable_base(staging, trial_config.get("model")) if (staging / PEFT_CONFIG).exists() else None
        if merged:
            from peft import PeftModel  # slow to import; only --merged needs it

            loaded = load_adapter(staging)
            assert isinstance(loaded.model, PeftModel)  # --merged is refused above for anything but LoRA
            full = loaded.model.merge_and_unload()
            set_name_or_path(full.config, read_metadata(staging)["base_model"]["id"])  # no machine path in config.json
            full.save_pretrained(staging / "merged")
            loaded.tokenizer.save_pretrained(staging / "merged")
        (staging / "README.md").write_text(model_card(run, trial_config, read_metadata(staging), merged, loadable_base))
        if target.exists():
            target.rmdir()
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return sorted(p for p in target.rglob("*") if p.is_file())


def score_rows(metrics: dict[str, float]) -> list[tuple[str, float, float | None, int | None]]:
    """(metric, value, stderr, n docs) for every eval/<metric> with a value (stderr columns folded in)."""
    docs = metrics.get("eval/docs")
    rows = []
    for key, value in sorted(metrics.items()):
        name = key.removeprefix("eval/")
        if not key.startswith("eval/") or name.endswith("_stderr") or name in ("docs", "seconds"):
            continue
        rows.append((name, value, metrics.get(f"{key}_stderr"), int(docs) if docs is not None else None))
    return rows


def model_card(run, trial_config: dict, meta: dict, merged: bool, loadable_base: str | None = None) -> str:
    tags, metrics = run.data.tags, run.data.metrics
    base = meta["base_model"]
    method, task = meta["method"], tags.get("task", "?")
    peft = meta.get("format") == "peft"
    front = ["---", "library_name: peft" if peft else "library_name: adamole-bench"]
    if "/" in base["id"]:  # a hub id (the model card's base_model must be one)
        front.append(f"base_model: {base['id']}")
    front += ["pipeline_tag: text-generation", "tags:", "- adamole-bench", f"- {method}", f"- {task}", "---", ""]

    lines = [f"# {method} adapter for {task} on {base['id']}", ""]
    lines += [
        f"Trained and evaluated by adamole-bench: MLflow run `{run.info.run_id}` ({tags.get('mlflow.runName', '')}), seed {tags.get('seed')}, config hash `{tags.get('config_hash')}`.",
        "",
    ]
    lines += ["## Scores", "", "| metric | value | ± stderr | 95% interval | n docs |", "|---|---|---|---|---|"]
    for name, value, stderr, docs in score_rows(metrics):
        interval = f"[{value - Z_95 * stderr:.4f}, {value + Z_95 * stderr:.4f}]" if stderr is not None else "–"
        lines.append(f"| {name} | {value:.4f} | {'–' if stderr is None else f'{stderr:.4f}'} | {interval} | {docs if docs is not None else '–'} |")
    eval_config = trial_config.get("eval", {})
    lines += [
        "",
        f"Protocol `{tags.get('protocol')}` (lm-eval), eval limit {eval_config.get('limit')}. The interval is value ± 1.96·stderr, "
        "lm-eval's stderr over the eval docs of this one seed; it does not include the variation over seeds.",
        "",
        "## Base model",
        "",
    ]
    lines += [f"- {key}: `{value}`" for key, value in base.items() if value is not None]
    if loadable_base:
        lines += [f"- adapter_config.json names `{loadable_base}`: the weights trained on, as a folder on the machine that exported this"]
    if base.get("embedded") and base["id"] != base["embedded"]:
        lines += [
            "",
            f"**Warning:** the hub's `{base['id']}` weights differ from the ones this adapter was trained on (the embedded "
            f"`{base['embedded']}`, fingerprint `{base['fingerprint']}`: {base.get('note', 'converted by adamole-bench')}). "
            "Load the base named in adapter_config.json, or let `adamole_bench.load_adapter` resolve the embedded model, not the hub id.",
        ]
    lines += ["", "## Data", "", f"- source: {tags.get('data_source')}", f"- notes: {tags.get('data_notes')}"]
    lines += [
        f"- {key.removeprefix('data_fingerprint.')} split: `{value}`" for key, value in sorted(tags.items()) if key.startswith("data_fingerprint.")
    ]
    lines += [f"- trained on {key.removeprefix('train_data.')}: `{value}`" for key, value in sorted(tags.items()) if key.startswith("train_data.")]
    lines += ["", "## Code", "", f"- adamole-bench commit `{tags.get('git_commit')}` (dirty: {tags.get('git_dirty')})"]
    lines += [f"- {key.removeprefix('version.')} {value}" for key, value in sorted(tags.items()) if key.startswith("version.")]
    lines += [
        "",
        "## How to load",
        "",
        "```python",
        "import adamole_bench",
        "",
        'loaded = adamole_bench.load_adapter("THIS_FOLDER")  # the base model it was trained on + the adapter',
    ]
    lines += [
        'inputs = loaded.tokenizer("Question: ...", return_tensors="pt")',
        "print(loaded.tokenizer.decode(loaded.model.generate(**inputs, max_new_tokens=20)[0]))",
        "```",
        "",
    ]
    if peft:
        lines += [
            "Or with PEFT itself (`import adamole_bench` first: it registers the mixture methods with PEFT):",
            "",
            "```python",
            "import adamole_bench",
            "from peft import AutoPeftModelForCausalLM",
            "",
            'model = AutoPeftModelForCausalLM.from_pretrained("THIS_FOLDER")  # the base named in adapter_config.json + the adapter',
            "```",
            "",
        ]
    if merged:
        lines += [
            "`merged/` holds the LoRA merged into the base weights, a plain transformers model:",
            "",
            "```python",
            "from transformers import AutoModelForCausalLM",
            "",
            'model = AutoModelForCausalLM.from_pretrained("THIS_FOLDER/merged")',
            "```",
            "",
        ]
    lines += ["## Configuration", "", "```json", json.dumps(trial_config, indent=2, sort_keys=True), "```", ""]
    return "\n".join(front + lines)
