"""A user's own task data (`--data-dir DIR`, `DIR/<task>/train.jsonl` and `validation.jsonl`), read and
checked doc by doc the way training and evaluation will read it, so a broken file is one line naming
the file, the line and the fix before any run starts."""

# Imported where used: datasets (about 1 s; listing and validating tasks needs no data)
import json
from pathlib import Path

from ..base.errors import UserError, error_line
from .registry import TaskSpec, eval_row, keeps

EVAL_NAMES = ("eval", "validation", "test")


def read_folder(spec: TaskSpec, data_dir: Path) -> dict[str, list[dict]] | None:
    """The task's splits from `data_dir/<task>/`, or None when there is no such folder."""
    folder = data_dir / spec.name
    if not folder.is_dir():
        return None
    splits = {}
    for split, names in (("train", ("train",)), ("eval", EVAL_NAMES)):
        for stem in names:
            for candidate in (folder / f"{stem}.jsonl", folder / f"{stem}.parquet", folder / stem):
                if candidate.exists() and split not in splits:
                    splits[split] = _checked(spec, candidate, _read_file(candidate))
    if "eval" not in splits:  # the folder says the user meant to provide this task: never fall back silently
        raise UserError(
            f"{folder} has no eval split: add validation.jsonl (or eval.jsonl, test.jsonl, .parquet, a save_to_disk folder), or remove the folder to use the built-in data"
        )
    return splits


def _read_jsonl(path: Path) -> list[tuple[str, dict]]:
    try:
        text = path.read_text()
    except UnicodeDecodeError as err:
        raise UserError(f"{path} is not UTF-8 text (byte {err.start}); save it as UTF-8 JSON Lines") from None
    docs = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            doc = json.loads(line)
        except json.JSONDecodeError as err:
            raise UserError(f"{path} line {number}: not valid JSON ({err.msg}, column {err.colno}); fix or delete that line") from None
        if not isinstance(doc, dict):
            raise UserError(f"{path} line {number}: expected one JSON object (a doc) per line, got a {type(doc).__name__}")
        docs.append((f"line {number}", doc))
    return docs


def _read_file(path: Path) -> list[tuple[str, dict]]:
    """(where, doc) pairs, `where` being "line N" or "row N" for error messages."""
    if path.suffix == ".jsonl":
        return _read_jsonl(path)
    import datasets

    kind = "a parquet file" if path.suffix == ".parquet" else "a datasets folder (save_to_disk)"
    try:
        rows = datasets.Dataset.from_parquet(str(path)) if path.suffix == ".parquet" else datasets.load_from_disk(str(path))
        return [(f"row {number}", dict(doc)) for number, doc in enumerate(rows, start=1)]
    except Exception as err:  # noqa: BLE001 - pyarrow and datasets raise many types for a bad file
        raise UserError(f"{path} cannot be read as {kind} ({error_line(err)}); rewrite it, or use {path.stem}.jsonl") from None


def _checked(spec: TaskSpec, path: Path, docs: list[tuple[str, dict]]) -> list[dict]:
    """A user's split file, every doc checked the way training and evaluation will read it."""
    if not docs:
        raise UserError(
            f"{path} has no docs; add one JSON object per line in the official HF schema of {spec.name} (docs/tasks.md) or remove the file"
        )
    for where, doc in docs:
        try:
            if not keeps(spec, doc):
                continue
            row = eval_row(spec, doc)
        except KeyError as err:
            raise UserError(f"{path} {where}: the doc has no field {err}; {spec.name} docs use its official HF schema (docs/tasks.md)") from None
        except (IndexError, ValueError, TypeError, AttributeError) as err:
            raise UserError(
                f"{path} {where}: a field has the wrong type or value ({type(err).__name__}: {err}); {spec.name} docs use its official HF schema (docs/tasks.md)"
            ) from None
        if not 0 <= row["label"] < len(row["choices"]):
            raise UserError(
                f"{path} {where}: the label points at answer {row['label']} but the doc has {len(row['choices'])} choices (0-based index expected)"
            )
    return [doc for _, doc in docs]
