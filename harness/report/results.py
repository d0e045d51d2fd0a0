"""Which runs a table shows: finished trials read from MLflow, filtered (--methods, --tasks,
--config-hash, --where), grouped into one row per (method, config variant) labelled by the
settings that differ, plus the zero-shot `base` run of the same model and eval protocol.

A table, its plots and its source list are all built from one `select_rows` result, so they
always describe exactly the same runs.
"""

# Imported where used: mlflow (as in harness/store/tracking.py)
import hashlib
import json
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ...base.errors import UserError, unknown
from ..store.fingerprint import IMPLEMENTATION_KEYS, implementation
from ..store.tracking import quiet_artifact_downloads

REFERENCE_METHOD = "base"  # the untrained model: what a method has to beat
NOT_VARIANT = ("task", "seed")  # params that vary inside one row
SAMPLES_ARTIFACT = "lm_eval/samples.json"


def rows_from_mlflow(tracker, model=None, methods=None, tasks=None) -> list[dict]:
    """One row per finished trial; a (config hash, implementation, seed) recorded twice counts once (the newest)."""
    conditions = ["tags.kind = 'trial'", "attributes.status = 'FINISHED'"]
    if model:
        conditions.append(f"tags.model = '{model}'")
    runs = tracker.client.search_runs(
        [tracker.experiment_id], filter_string=" and ".join(conditions), order_by=["attributes.start_time DESC"], max_results=50000
    )
    rows = {}
    for run in runs:
        tags, metrics = run.data.tags, run.data.metrics
        key = (tags.get("config_hash"), tags.get("implementation"), tags.get("seed"))
        if key in rows or "eval/acc" not in metrics:
            continue
        if (methods and tags["method"] not in methods) or (tasks and tags["task"] not in tasks):
            continue
        rows[key] = {
            "method": tags["method"],
            "task": tags["task"],
            "seed": int(tags["seed"]),
            "model": tags.get("model"),
            "protocol": tags.get("protocol"),
            "config_hash": tags.get("config_hash"),
            "acc": metrics["eval/acc"],
            "acc_stderr": metrics.get("eval/acc_stderr"),
            "docs": int(metrics["eval/docs"]) if "eval/docs" in metrics else None,
            "train_loss": metrics.get("train/mean_loss"),
            "trainable_params": metrics.get("params/trainable"),
            "tokens_per_second": metrics.get("train/tokens_per_second"),
            "data_source": tags.get("data_source"),
            "params": {k: v for k, v in run.data.params.items() if k not in NOT_VARIANT},
            "implementation": {k: tags[k] for k in ("implementation", *IMPLEMENTATION_KEYS) if k in tags},
            "git_commit": tags.get("git_commit"),
            "run_id": run.info.run_id,
        }
    return sorted(rows.values(), key=lambda r: (r["task"], r["method"], r["seed"]))


def check_single_model(rows: list[dict]) -> None:
    """Mixing base models in one table compares apples with pears; make the user pick one."""
    models = sorted({r["model"] for r in rows if r.get("model")})
    if len(models) > 1:
        raise UserError(f"runs from several models ({', '.join(models)}); pick one with --model")


# --- variants -----------------------------------------------------------------------------------


def variant_id(params: dict, fingerprint: dict | None = None) -> str:
    """Names one resolved config, computed by one implementation, across tasks (a trial's config_hash also
    covers its task; a row without a fingerprint, from before fingerprints, is named by its config alone)."""
    return hashlib.sha256(json.dumps({**params, **(fingerprint or {})}, sort_keys=True).encode()).hexdigest()[:8]


def reference_key(params: dict, fingerprint: dict) -> tuple:
    """What a `base` run must share with a row to be its reference: model, precision, data, eval protocol,
    and the shared code and package releases (a method's own code is the one thing that differs)."""
    settings = ((k, v) for k, v in params.items() if k in ("model", "precision", "data_dir") or k.startswith("eval."))
    return tuple(sorted(settings)) + shared_implementation(fingerprint)


def shared_implementation(fingerprint: dict) -> tuple:
    """The parts of a fingerprint that every method shares: the shared code and the package releases."""
    return tuple(sorted((k, v) for k, v in fingerprint.items() if k not in ("implementation", "code.method")))


def current_code(row: dict) -> bool:
    """Whether a row was computed by the code and packages installed here."""
    try:
        return row.get("implementation", {}).get("implementation") == implementation(row["method"])["implementation"]
    except UserError:  # a method not installed here (a plugin): not the current code
        return False


def untrained(params: dict) -> bool:
    return params.get("train") == "None"  # the sweep resolves an untrained method's train settings to None


@dataclass
class Variant:
    """One table row: a method under one resolved config, with its runs per task (one per seed)."""

    method: str
    params: dict[str, str]
    runs: dict[str, list[dict]] = field(default_factory=dict)
    label: str = ""
    implementation: dict[str, str] = field(default_factory=dict)  # one fingerprint per row (harness/store/fingerprint.py)
    git_commit: str | None = None

    @property
    def reference(self) -> bool:
        return self.method == REFERENCE_METHOD

    @property
    def id(self) -> str:
        return variant_id(self.params, self.implementation)

    @property
    def config_hashes(self) -> dict[str, str]:
        return {task: runs[0]["config_hash"] for task, runs in self.runs.items()}

    def run_ids(self) -> list[str]:
        return [r["run_id"] for runs in self.runs.values() for r in runs]


def _setting_name(method: str, key: str) -> str:
    """Flattened param → what a user types: method_config.rank → lora.rank (as in key=value overrides)."""
    return f"{method}.{key.removeprefix('method_config.')}" if key.startswith("method_config.") else key


def group_variants(rows: list[dict], order: list[str] | None = None) -> list[Variant]:
    """Rows → one Variant per (method, resolved config); base first, then `order` (or store order).
    Every variant of a method that has several is labelled by the settings that tell them apart."""
    variants: dict[tuple[str, str], Variant] = {}
    for row in sorted(rows, key=lambda r: r["seed"]):
        key = (row["method"], variant_id(row["params"], row.get("implementation")))
        variant = variants.setdefault(
            key, Variant(row["method"], row["params"], implementation=row.get("implementation", {}), git_commit=row.get("git_commit"))
        )
        seeds = variant.runs.setdefault(row["task"], [])
        if not (untrained(row["params"]) and seeds):  # an untrained model scores the same for every seed
            seeds.append(row)
    methods = list(dict.fromkeys([REFERENCE_METHOD, *(order or []), *(v.method for v in variants.values())]))
    ordered = sorted(variants.values(), key=lambda v: (methods.index(v.method), sorted(v.params.items()), sorted(v.implementation.items())))
    for method in methods:
        mine = [v for v in ordered if v.method == method]
        keys = sorted({k for v in mine for k in v.params})
        differing = [k for k in keys if len({v.params.get(k) for v in mine}) > 1]
        code = [k for k in IMPLEMENTATION_KEYS if len({v.implementation.get(k) for v in mine}) > 1]
        for v in mine:
            details = [f"{_setting_name(method, k)}={v.params.get(k, '–')}" for k in differing]
            details += [f"{k}={v.implementation.get(k, '?')}" for k in code]
            if code and v.git_commit:
                details.append(f"git {v.git_commit[:7]}")
            if v.reference:
                details.insert(0, "zero-shot")
            v.label = f"{method} ({', '.join(details)})" if details else method
    return ordered


# --- filters ------------------------------------------------------------------------------------


def _normal(value):
    text = str(value).strip().strip("'\"")
    if text in ("None", "null", "~", ""):
        return None
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    try:
        return float(text)
    except ValueError:
        return text


def same_value(stored: str, wanted: str) -> bool:
    """`--where train.lr=3e-3` matches the stored param "0.003"; null matches None; true matches True."""
    a, b = _normal(stored), _normal(wanted)
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=0.0)
    return a == b


def parse_where(texts: list[str], rows: list[dict]) -> list[tuple[str | None, str, str]]:
    """`key=value` → (method or None, param, value); `lora.rank=8` means method lora, method_config.rank = 8."""
    known = {k for r in rows for k in r["params"]}
    methods = {r["method"] for r in rows}
    parsed: list[tuple[str | None, str, str]] = []
    for text in texts:
        key, found, value = text.partition("=")
        key = key.strip()
        if not found or not key:
            raise UserError(f"--where takes key=value, e.g. --where train.lr=3e-3 (got '{text}')")
        head, _, tail = key.partition(".")
        if key in known:
            parsed.append((None, key, value))
        elif head in methods and f"method_config.{tail}" in known:
            parsed.append((head, f"method_config.{tail}", value))
        else:
            names = known | {f"{r['method']}.{k.removeprefix('method_config.')}" for r in rows for k in r["params"] if k.startswith("method_config.")}
            raise unknown("--where setting", key, names, "settings are the resolved params of the runs (MLflow params)")
    return parsed


def select_rows(
    rows: list[dict],
    methods: list[str] | None = None,
    config_hashes: list[str] | None = None,
    where: list[str] | None = None,
    reference: bool = True,
    current: bool = False,
) -> list[dict]:
    """The runs one table shows. Filters pick the compared rows (`current`: only those the installed code
    computed); with `reference`, the `base` runs of the same eval protocol, task and shared code are added
    as reference rows whatever the filters say."""
    conditions = parse_where(where or [], rows)
    if current:
        rows = [r for r in rows if current_code(r)]

    def chosen(row: dict) -> bool:
        if methods and row["method"] not in methods:
            return False
        if config_hashes and not any(
            row["config_hash"].startswith(h) or variant_id(row["params"], row.get("implementation")).startswith(h) for h in config_hashes
        ):
            return False
        for method, key, value in conditions:
            if (method and row["method"] != method) or key not in row["params"] or not same_value(row["params"][key], value):
                return False
        return True

    selected = [r for r in rows if chosen(r)]
    if reference:
        wanted = {(r["task"], reference_key(r["params"], r.get("implementation", {}))) for r in selected}
        ids = {r["run_id"] for r in selected}
        selected += [
            r for r in rows
            if r["method"] == REFERENCE_METHOD and r["run_id"] not in ids and (r["task"], reference_key(r["params"], r.get("implementation", {}))) in wanted
        ]  # fmt: skip
    return selected


# --- per-doc samples and published numbers ----------------------------------------------------------------------------


def download(tracker, run_id: str, artifact: str, target: Path) -> Path:
    """One artifact of a run to `target` (replaced), without a progress bar."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch, quiet_artifact_downloads():
        Path(tracker.client.download_artifacts(run_id, artifact, scratch)).replace(target)
    return target


_samples_cache: dict[tuple[str, str], list[dict] | None] = {}


def samples_loader(tracker):
    """run id → the run's per-doc records (label, prediction, acc), or None where none were logged.
    Cached per (store, run id): a finished run's artifacts never change."""
    from mlflow.exceptions import MlflowException

    def load(run_id: str) -> list[dict] | None:
        key = (tracker.uri, run_id)
        if key not in _samples_cache:
            try:
                with tempfile.TemporaryDirectory() as folder:
                    path = download(tracker, run_id, SAMPLES_ARTIFACT, Path(folder) / "samples.json")
                    _samples_cache[key] = json.loads(path.read_text())
            except (MlflowException, OSError):
                _samples_cache[key] = None
        return _samples_cache[key]

    return load


def load_published(path: str | Path, model: str | None) -> dict[tuple[str, str], float]:
    """results/published.yaml: `entries: [{model, method, task, acc, source}]`, acc as a fraction."""
    path = Path(path)
    if not path.exists():
        return {}
    document = yaml.safe_load(path.read_text()) or {}
    entries = document.get("entries") or []
    published = {}
    for number, entry in enumerate(entries, start=1):
        missing = {"model", "method", "task", "acc", "source"} - set(entry)
        if missing:
            raise UserError(f"{path} entry {number} lacks {', '.join(sorted(missing))} (see the schema at the top of the file)")
        if not 0.0 <= float(entry["acc"]) <= 1.0:
            raise UserError(f"{path} entry {number}: acc must be a fraction in [0, 1], got {entry['acc']}")
        if model is None or entry["model"] == model:
            published[(entry["method"], entry["task"])] = float(entry["acc"])
    return published
