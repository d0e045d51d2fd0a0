"""lm-eval bridge: score the in-memory model on the project's own task YAMLs (tasks/lm_eval/)."""

import functools
import json
import logging
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from ..tasks.registry import TASK_DIR, lm_eval_task_name
from ..tasks.sources import TaskData, pinned
from .config import EvalConfig
from .progress import phase
from .precision import Precision
from .provenance import code_version


@dataclass
class EvalResult:
    metrics: dict[str, float]  # clean names: acc, acc_stderr, acc_norm, ...
    lm_eval_task: str
    results_json: dict  # lm-eval's output without per-sample records
    samples: list[dict] = field(default_factory=list)  # per doc: label, prediction, log-likelihoods


@contextmanager
def _our_git_hash():
    """lm-eval runs `git describe` in the cwd: wrong repo (or a 'fatal:' line) for us. Record ours."""
    import lm_eval.evaluator

    original = getattr(lm_eval.evaluator, "get_git_commit_hash", None)
    if original is None:  # another lm-eval version: leave it alone
        yield
        return
    lm_eval.evaluator.get_git_commit_hash = lambda: code_version()["git_commit"]
    try:
        yield
    finally:
        lm_eval.evaluator.get_git_commit_hash = original


@functools.cache
def task_manager():
    """Only our YAMLs: indexing lm-eval's ~10k default tasks would cost ~11 s per process."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=str(TASK_DIR / "lm_eval"), include_defaults=False)


def clean_metric_name(key: str) -> str:
    """lm-eval's "acc,none" → "acc"; other filters keep their name ("exact_match,strict" → "exact_match/strict")."""
    metric, _, filter_name = key.partition(",")
    return metric if filter_name in ("", "none") else f"{metric}/{filter_name}"


def _sample_record(sample: dict) -> dict:
    """Per doc: the prediction and what it came from (choice log-likelihoods, or the generated text)."""
    record = {"doc_id": sample["doc_id"], "label": sample["target"], "acc": sample.get("acc")}
    responses = sample["resps"]
    if responses and isinstance(responses[0][0], str):  # generate protocol
        record["generation"] = responses[0][0]
        return record
    logliks = [float(resp[0][0]) for resp in responses]
    record["prediction"] = int(max(range(len(logliks)), key=logliks.__getitem__))
    record["loglikelihoods"] = logliks
    return record


@contextmanager
def _without_bars(lm):
    """lm-eval's own tqdm bars (one per request type, passed disable=False, and one while it builds the
    requests) would tear the sweep's display in a terminal and are noise in a log: our eval bar
    (harness/progress.py) replaces them. The request methods take `disable_tqdm`; the builder is patched
    for the call, as `_our_git_hash` patches lm-eval's git lookup."""
    import lm_eval.api.task
    from tqdm import tqdm

    for request_type in ("loglikelihood", "loglikelihood_rolling", "generate_until"):
        setattr(lm, request_type, functools.partial(getattr(lm, request_type), disable_tqdm=True))
    original = getattr(lm_eval.api.task, "tqdm", None)
    lm_eval.api.task.tqdm = functools.partial(tqdm, disable=True)
    try:
        yield
    finally:
        lm_eval.api.task.tqdm = original


def evaluate(model: torch.nn.Module, tokenizer, data: TaskData, config: EvalConfig, precision: Precision | None = None) -> EvalResult:
    """Score `model` as it is, without autograd, in `precision` (default fp32); log-softmax in fp32."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    device = next(model.parameters()).device
    precision = precision or Precision("fp32", device.type)
    # HFLM enters its own autocast around every model call (disabled unless given a dtype), so the
    # precision goes in here rather than as an outer autocast, which that inner one would switch off.
    lm = HFLM(
        pretrained=model, tokenizer=tokenizer, batch_size=config.batch_size, device=str(device),
        mixed_precision_dtype=precision.compute_dtype if precision.mixed else None, softmax_dtype=torch.float32,
    )  # fmt: skip
    name = lm_eval_task_name(data.spec.name, config.protocol)
    docs = len(data.splits["eval"][: config.limit])
    with pinned(data), _our_git_hash(), _without_bars(lm), phase("  eval", kind="eval", detail=f"{data.spec.name}, {docs} docs"), torch.inference_mode():
        output = lm_eval.simple_evaluate(
            model=lm,
            tasks=[name],
            task_manager=task_manager(),
            num_fewshot=0,
            limit=config.limit,
            log_samples=True,
            bootstrap_iters=1000,  # 'mean' metrics get lm-eval's analytic stderr; this only affects others
            random_seed=0,
            numpy_random_seed=0,
            torch_random_seed=0,
            fewshot_random_seed=0,
        )
    metrics = {
        clean_metric_name(key): float(value)
        for key, value in output["results"][name].items()
        if "," in key and isinstance(value, (int, float))
    }
    samples = [_sample_record(s) for s in output.pop("samples", {}).get(name, [])]
    results_json = json.loads(json.dumps(output, default=str))  # drop objects MLflow can't serialise
    return EvalResult(metrics=metrics, lm_eval_task=name, results_json=results_json, samples=samples)
