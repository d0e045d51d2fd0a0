"""lm-eval `custom_dataset` entry point (lm-eval imports this file by path, hence absolute imports)."""

import re

import datasets

from adamole_bench.tasks.registry import eval_row, get_task
from adamole_bench.tasks.sources import resolve

ANSWER_LETTER = re.compile(r"\b([A-Z])\b")  # the reference's generation-mode answer regex


def load(task: str, **_metadata) -> datasets.DatasetDict:
    spec = get_task(task)
    rows = [eval_row(spec, doc) for doc in resolve(task).splits["eval"]]
    return datasets.DatasetDict({"eval": datasets.Dataset.from_list(rows)})


def extract_letter(generation: str) -> str | None:
    match = ANSWER_LETTER.search(generation)
    return match.group(1) if match else None


def score_generation(doc: dict, results: list[str]) -> dict:
    """Generate protocol: correct when the first standalone capital letter generated is the gold letter."""
    return {"acc": float(extract_letter(results[0]) == doc["gold_letter"])}
