"""Our tasks as lm-eval configs: the `<task>_<protocol>` YAMLs here, for lm-eval's own CLI, and `task_config`,
the same config with the docs handed in, for the harness (lm-eval imports this file by path, hence absolute imports)."""

import functools
import os
import re

import datasets
import yaml

from adamole_bench.tasks.registry import LM_EVAL_DIR, eval_row, lm_eval_task_name
from adamole_bench.tasks.sources import TaskData, load_task

ANSWER_LETTER = re.compile(r"\b([A-Z])\b")  # the reference's generation-mode answer regex


def as_dataset(data: TaskData) -> datasets.DatasetDict:
    """The eval docs as lm-eval reads them: one row per doc carrying every protocol's view of it."""
    return datasets.DatasetDict({"eval": datasets.Dataset.from_list([eval_row(data.spec, doc) for doc in data.splits["eval"]])})


def load(task: str, **_metadata) -> datasets.DatasetDict:
    """`custom_dataset` of the task YAMLs (lm-eval's CLI): the task's docs from its sources (ADAMOLE_BENCH_DATA_DIR applies)."""
    return as_dataset(load_task(task, os.environ.get("ADAMOLE_BENCH_DATA_DIR")))


def extract_letter(generation: str) -> str | None:
    match = ANSWER_LETTER.search(generation)
    return match.group(1) if match else None


def score_generation(doc: dict, results: list[str]) -> dict:
    """Generate protocol: correct when the first standalone capital letter generated is the gold letter."""
    return {"acc": float(extract_letter(results[0]) == doc["gold_letter"])}


class _ProtocolLoader(yaml.SafeLoader):
    """Reads `!function loader.NAME` as this module's NAME, the function lm-eval would import by path."""


_ProtocolLoader.add_constructor("!function", lambda loader, node: globals()[loader.construct_scalar(node).removeprefix("loader.")])


@functools.cache
def _protocol_config(protocol: str) -> dict:
    return yaml.load((LM_EVAL_DIR / f"_{protocol}.yaml").read_text(), Loader=_ProtocolLoader)


def task_config(data: TaskData, protocol: str) -> dict:
    """lm-eval's config for `data` under `protocol`: the protocol's YAML, with exactly these docs as its dataset."""
    dataset = as_dataset(data)
    return {**_protocol_config(protocol), "task": lm_eval_task_name(data.spec.name, protocol), "custom_dataset": lambda **_: dataset}
