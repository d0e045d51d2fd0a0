"""lm-eval `custom_dataset` entry point (lm-eval imports this file by path, hence absolute imports)."""

import datasets

from adamole_bench.tasks.registry import eval_row, get_task
from adamole_bench.tasks.sources import resolve


def load(task: str, **_metadata) -> datasets.DatasetDict:
    spec = get_task(task)
    rows = [eval_row(spec, doc) for doc in resolve(task).splits["eval"]]
    return datasets.DatasetDict({"eval": datasets.Dataset.from_list(rows)})
