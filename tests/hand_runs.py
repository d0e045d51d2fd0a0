"""Hand-made finished runs with per-doc samples, shaped like harness/results.rows_from_mlflow's rows,
so table tests know every answer: which doc each run got right and which letter it chose."""

import hashlib
import itertools
import json

PARAMS = {"model": "m", "dtype": "float32", "data_dir": "None", "eval.protocol": "letter", "eval.batch_size": "16", "eval.limit": "200"}
_ids = itertools.count()


def labels(a: int, b: int) -> list[int]:
    """a docs labelled A (0), then b docs labelled B (1)."""
    return [0] * a + [1] * b


def run(method: str, task: str, seed: int, predictions: list[int], gold: list[int], samples: dict, **params) -> dict:
    """One run's row; its per-doc records go into `samples` under its run id."""
    run_id = f"run{next(_ids)}"
    records = [{"doc_id": i, "label": g, "prediction": p, "acc": float(p == g)} for i, (p, g) in enumerate(zip(predictions, gold))]
    samples[run_id] = records
    resolved = {**PARAMS, "method": method, **({"train": "None"} if method == "base" else {"train.lr": "0.0005"}), **params}
    return {
        "method": method,
        "task": task,
        "seed": seed,
        "model": "m",
        "config_hash": hashlib.sha256(json.dumps([task, resolved], sort_keys=True).encode()).hexdigest()[:12],
        "acc": sum(r["acc"] for r in records) / len(records),
        "docs": len(records),
        "params": resolved,
        "trainable_params": None if method == "base" else 1000.0,
        "tokens_per_second": None if method == "base" else 50.0,
        "run_id": run_id,
    }


def right_on(gold: list[int], right: int) -> list[int]:
    """Predictions that get the first `right` docs right and the rest wrong (two-choice tasks)."""
    return [g if i < right else 1 - g for i, g in enumerate(gold)]
