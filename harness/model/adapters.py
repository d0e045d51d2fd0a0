"""Saved adapters outside the harness: one call loads the base model it was trained on plus the adapter.

    loaded = adamole_bench.load_adapter("runs:/<run_id>/adapter")   # or a local folder
    loaded.model.generate(**loaded.tokenizer("Hello", return_tensors="pt"), max_new_tokens=20)

The base model comes from the record every adapter folder holds (adamole_bench_adapter.json):
embedded models resolve offline, hub models by id and revision; the weights loaded must have the
fingerprint recorded at training, so an adapter is never silently applied to other weights.
"""

# Imported where used: mlflow (only a runs:/ URI needs the store)
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from torch import nn

from ...base.errors import UserError
from ...methods.registry import ADAPTER_CONFIG, PEFT_CONFIG, Method, build_method
from ..store.tracking import _check_reachable, default_tracking_uri, quiet_artifact_downloads
from .loading import DTYPES, EMBEDDED_MODELS, BaseModel, _files_fingerprint, embedded_checkpoint, load_base_model

if TYPE_CHECKING:  # transformers is slow to import; here its classes are annotations only
    from transformers import PreTrainedTokenizerBase


@dataclass
class LoadedAdapter:
    model: nn.Module  # the base model with the adapter, in eval mode (a PeftModel for PEFT-layout adapters)
    tokenizer: "PreTrainedTokenizerBase"
    method: Method
    base: BaseModel
    metadata: dict  # the adapter's adamole_bench_adapter.json: method, config, tags, base_model


def save_adapter(model: nn.Module, path: str | Path, method: Method, base: BaseModel) -> Path:
    """Save `model`'s adapter (trained with `method` on `base`) where `load_adapter` and PEFT find it."""
    method.save(model, path, base.reference())
    return Path(path)


def load_adapter(
    source: str | Path,
    *,
    base_model: str | None = None,
    device: str = "cpu",
    dtype: str | None = None,
    tracking_uri: str | None = None,
    check_base: bool = True,
) -> LoadedAdapter:
    """Base model + adapter from a folder or an MLflow `runs:/<run_id>/adapter` URI, ready for `generate`.

    base_model: load onto this model (name, hub id or path) instead of the recorded one; needed for
        adapters trained on a local folder. dtype: defaults to the dtype it was trained in.
    check_base: refuse (the default) when the base weights' fingerprint differs from the recorded one.
    """
    if str(source).startswith("runs:/"):
        with tempfile.TemporaryDirectory() as folder:
            return _load_folder(download_run_artifact(str(source), folder, tracking_uri), base_model, device, dtype, check_base)
    local = Path(source).expanduser()
    if not local.is_dir():
        raise UserError(f"no adapter folder at {local}; pass a folder written by `adamole-bench export` or a runs:/<run_id>/adapter URI")
    return _load_folder(local, base_model, device, dtype, check_base)


def download_run_artifact(uri: str, folder: str | Path, tracking_uri: str | None = None) -> Path:
    """`runs:/<run_id>/<path>` from the MLflow store (MLFLOW_TRACKING_URI or ./runs) into `folder`."""
    from mlflow.artifacts import download_artifacts
    from mlflow.exceptions import MlflowException

    store = tracking_uri or default_tracking_uri()
    _check_reachable(store)
    try:
        with quiet_artifact_downloads():
            return Path(download_artifacts(artifact_uri=uri, dst_path=str(folder), tracking_uri=store))
    except (MlflowException, OSError) as err:
        raise UserError(f"cannot fetch {uri} from MLflow store {store}: {str(err).splitlines()[0]}") from None


def read_metadata(folder: Path) -> dict:
    path = folder / ADAPTER_CONFIG
    if not path.exists():
        raise UserError(f"{folder} is not an adamole-bench adapter (no {ADAPTER_CONFIG}); a plain PEFT adapter loads with PeftModel.from_pretrained")
    return json.loads(path.read_text())


def record_loadable_base(folder: Path, model_path: str | None = None) -> str:
    """Point `folder`'s adapter_config.json at a base that PEFT's `AutoPeftModelForCausalLM` loads offline
    with the very weights trained on; returns what it names.

    The saved record (adamole_bench_adapter.json) keeps the portable id and fingerprint; this is the path
    on this machine: an embedded model's checkpoint folder, or the local folder `model_path` trained on
    when its weights still have the recorded fingerprint. A hub model keeps its id and commit."""
    record = read_metadata(folder).get("base_model") or {}
    if record.get("embedded") in EMBEDDED_MODELS:
        base = str(embedded_checkpoint(record["embedded"], record.get("dtype", "float32")))
    elif record.get("source") == "local" and model_path and Path(model_path).expanduser().is_dir():
        local = Path(model_path).expanduser().resolve()
        if _files_fingerprint(local) != record.get("fingerprint"):
            return record["id"]
        base = str(local)
    else:
        return record.get("id", "")
    config = json.loads((folder / PEFT_CONFIG).read_text())
    config |= {"base_model_name_or_path": base, "revision": None}
    (folder / PEFT_CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True))
    return base


def _load_folder(folder: Path, base_model: str | None, device: str, dtype: str | None, check_base: bool) -> LoadedAdapter:
    meta = read_metadata(folder)
    record = meta.get("base_model") or {}
    name, revision = base_model or _recorded_base(record, folder), None if base_model else record.get("revision")
    dtype = dtype or record.get("dtype", "float32")
    if dtype not in DTYPES:
        raise UserError(f"unknown dtype '{dtype}'; choose one of {', '.join(DTYPES)}")
    method = build_method(meta["method"], meta["config"])
    base = load_base_model(name, dtype=dtype, device=device, revision=revision)
    if check_base and record.get("fingerprint") and base.fingerprint != record["fingerprint"]:
        raise UserError(
            f"adapter was trained on {record['id']} with fingerprint {record['fingerprint']}, but '{name}' loads as "
            f"{base.fingerprint}; pass base_model= the right weights, or check_base=False to apply it anyway"
        )
    model = method.load(base.model, folder).eval()
    return LoadedAdapter(model=model, tokenizer=base.tokenizer, method=method, base=base, metadata=meta)


def _recorded_base(record: dict, folder: Path) -> str:
    """The model name `load_base_model` needs for a recorded base."""
    if record.get("embedded") in EMBEDDED_MODELS:
        return record["embedded"]
    if record.get("source") == "hub":
        return record["id"]
    if record.get("source") == "local":
        raise UserError(
            f"adapter at {folder} was trained on a local model folder '{record['id']}' ({record['fingerprint']}); "
            f"pass base_model='/path/to/{record['id']}'"
        )
    raise UserError(
        f"adapter at {folder} does not record its base model (saved before adamole-bench did); pass base_model=, e.g. base_model='smollm2-135m'"
    )
