"""lm-eval bridge: score the in-memory model on the project's own tasks, the docs handed to lm-eval in the task's config."""

# Imported where used: lm_eval, tqdm (lm-eval takes about 3 s with its datasets and pandas; the trial path imports this module before it evaluates)
import copy
import functools
import json
import logging
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from ...base.progress import phase
from ...base.upstream import lm_eval_environment, lm_eval_lookups_replaced, lm_eval_tqdm_replaced
from ...tasks.lm_eval.loader import task_config
from ...tasks.registry import lm_eval_task_name
from ...tasks.sources import TaskData
from ..model.loading import keeps_logits
from ..model.precision import Precision
from ..settings.config import EvalConfig
from ..store.provenance import code_version


@dataclass
class EvalResult:
    metrics: dict[str, float]  # clean names: acc, acc_stderr, acc_norm, ...
    lm_eval_task: str
    results_json: dict  # lm-eval's output without per-sample records
    samples: list[dict] = field(default_factory=list)  # per doc: label, prediction, log-likelihoods


@functools.cache
def _environment() -> dict:
    """lm-eval's environment record: torch's collect_env runs ~60 subprocesses (~0.8 s) for a
    result that is the same for every evaluation in the process."""
    return lm_eval_environment()


@contextmanager
def lm_eval_provenance():
    """lm-eval runs `git describe` in the cwd (the wrong repo for us, or a 'fatal:' line) and collects
    the environment at every call: record our commit, and the environment once per process."""
    with lm_eval_lookups_replaced(
        git_commit=lambda: code_version()["git_commit"], add_env_info=lambda results: results.update(copy.deepcopy(_environment()))
    ):
        yield


@functools.cache
def task_manager():
    """An empty index: our tasks come as configs, and indexing lm-eval's ~10k default tasks would cost ~11 s per process."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_defaults=False)


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
def lm_eval_bars_off():
    """lm-eval's own tqdm bars (one while it builds the requests, one per request type, passed
    disable=False) would tear the sweep's display in a terminal and are noise in a log: our eval bar
    (base/progress.py) replaces them. lm-eval's `tqdm` is replaced for the call, as `lm_eval_provenance`
    replaces its git and environment lookups."""
    from tqdm import tqdm

    def quiet(*args, **kwargs):
        return tqdm(*args, **kwargs | {"disable": True})

    with lm_eval_tqdm_replaced(quiet):
        yield


@functools.cache
def continuation_scorer():
    """lm-eval's HFLM, with the output head and log-softmax computed only where a continuation is
    scored. A multiple-choice doc needs logits at its answer tokens alone, yet HFLM asks for all
    positions: for a 135M model with a 49k vocabulary, that head, its fp32 cast and the softmax over
    every prompt token make BoolQ scoring 1.13× slower (SmolLM2, bf16, measured side by side).
    Scores are unchanged up to GEMM rounding (tests/test_scoring.py).

    The head still runs at the batch's last `keep` positions (as many as its shortest row needs), but
    lm-eval's log-softmax, which copies whatever it is handed, gets only each row's own last C positions
    (C: the longest continuation): BoolQ's first batch (rows of 798 down to 412 tokens) kept 387
    positions × 8 rows × 49k of fp32 logits, 580 MiB, and its log-softmax as much again. The head's
    product is the same GEMM as before and log-softmax works row by row, so every score is bitwise the
    same. A row's length is read from its right padding (token 0), so this needs requests without
    token 0; a call that has one is scored with the whole `keep` window as before."""
    from lm_eval.models.huggingface import HFLM

    class ContinuationScorer(HFLM):
        _longest_continuation: int | None = None
        _windows: deque | None = None  # this call's rows, in order: (row length, window width, batch width)
        _windowed = False  # whether this call's requests are free of token 0, so row lengths are exact
        trims_logits = True  # False for a model without `logits_to_keep` (loading.keeps_logits): scored as HFLM does
        windows_logits = True  # False: lm-eval gets the whole `keep` window of every row (same scores, more memory)

        def _loglikelihood_tokens(self, requests, *args, **kwargs):
            self._longest_continuation = max((len(continuation) for _, _, continuation in requests), default=None)
            self._windowed = self.windows_logits and all(0 not in context and 0 not in continuation for _, context, continuation in requests)
            try:
                return super()._loglikelihood_tokens(requests, *args, **kwargs)
            finally:
                self._longest_continuation, self._windows = None, None

        def _model_call(self, inps, attn_mask=None, labels=None):
            self._windows = None
            if not self.trims_logits or self._longest_continuation is None or attn_mask is not None or self.backend != "causal":
                return super()._model_call(inps, attn_mask, labels)
            # HFLM right-pads rows with token 0, so a row is at least as long as its last nonzero
            # token (a real trailing 0 only makes this shorter, which keeps more positions: safe).
            # Every row's continuation then lies in the last `keep` positions of the batch.
            width, longest = inps.shape[1], self._longest_continuation
            real = inps != 0
            lengths = torch.where(real.any(dim=1), width - real.flip(1).int().argmax(dim=1), 0)
            keep = min(width, width - int(lengths.min()) + longest)
            autocast = torch.autocast(self.device.type, dtype=self.mixed_precision_dtype, enabled=self.mixed_precision_dtype is not None)
            with torch.no_grad(), autocast:
                logits = self.model(inps, logits_to_keep=keep).logits
            if not self._windowed or keep <= longest:
                return logits
            # Row i's window: its positions [length - longest, length), within the kept `keep`.
            starts = (lengths - (width - keep) - longest).clamp(min=0)
            index = starts[:, None] + torch.arange(longest, device=inps.device)
            self._windows = deque((int(length), longest, width) for length in lengths)
            return logits.gather(1, index[..., None].expand(-1, -1, logits.shape[-1]))

        def _select_cont_toks(self, logits, contlen=None, inplen=None):
            if self._windows and self.backend == "causal" and inplen is not None and contlen is not None:
                length, window, width = self._windows.popleft()
                if inplen + width - window != length:  # lm-eval's inplen here = row length + window - batch width
                    raise RuntimeError(f"scoring read a row as {length} tokens, lm-eval has {inplen + width - window}: a bug in ContinuationScorer")
                return logits[window - contlen : window]
            if self.backend == "causal" and inplen is not None and contlen is not None and inplen < contlen:
                raise RuntimeError(f"scoring lost a continuation's logits ({contlen} tokens, {inplen} kept): a bug in ContinuationScorer")
            return super()._select_cont_toks(logits, contlen=contlen, inplen=inplen)

    return ContinuationScorer


@functools.cache
def reference_logits_scorer(scorer: type) -> type:
    """`scorer` encoding requests as the reference's --logits mode reads them (test.py:33-43): the
    prompt as written, trailing space included (lm-eval's `_encode_pair` would move it into the
    continuation), and each letter as the one id `tokenizer.encode(letter, add_special_tokens=False)[-1]`.
    lm-eval then returns log_softmax(last position's logits)[id] per letter, whose argmax is the
    argmax of the raw logits the reference takes."""

    class ReferenceLogits(scorer):
        def _encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
            return self.tok_encode(context), self.tokenizer.encode(continuation, add_special_tokens=False)[-1:]

    return ReferenceLogits


@functools.cache
def reference_generation_scorer(scorer: type) -> type:
    """`scorer` generating as the reference's generation mode on transformers 4.38.2 (test.py:104-127):
    its GenerationConfig(max_new_tokens=16, do_sample=False) has no eos_token_id, so EOS stops
    nothing and every doc gets exactly max_gen_toks tokens, special tokens dropped when decoded.
    No BOS: see `protocol_scorer`."""

    class ReferenceGeneration(scorer):
        def _model_generate(self, context, max_length: int, stop: list[str], **generation_kwargs):
            return super()._model_generate(context, max_length, stop=[], **generation_kwargs | {"eos_token_id": None})

    return ReferenceGeneration


def protocol_scorer(scorer: type, protocol: str) -> tuple[type, dict]:
    """The LM class and extra HFLM arguments a protocol scores with. The reference protocols need
    both: their rules are about tokens, which lm-eval's text requests cannot express. Its
    text-generation pipeline tokenizes without special tokens (add_special_tokens=False, 4.38.2
    text_generation.py:120), so reference_generate adds no BOS; reference_logits keeps the
    tokenizer's default, as test.py's `tokenizer(prompts)` does."""
    if protocol == "reference_logits":
        return reference_logits_scorer(scorer), {}
    if protocol == "reference_generate":
        return reference_generation_scorer(scorer), {"add_bos_token": False}
    return scorer, {}


def evaluate(model: torch.nn.Module, tokenizer, data: TaskData, config: EvalConfig, precision: Precision | None = None) -> EvalResult:
    """Score `model` as it is, without autograd, in `precision` (default fp32); log-softmax in fp32."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    device = next(model.parameters()).device
    precision = precision or Precision("fp32", device.type)
    # HFLM enters its own autocast around every model call (disabled unless given a dtype), so the
    # precision goes in here rather than as an outer autocast, which that inner one would switch off.
    scorer, protocol_arguments = protocol_scorer(continuation_scorer() if keeps_logits(model) else HFLM, config.protocol)
    lm = scorer(
        pretrained=model, tokenizer=tokenizer, batch_size=config.batch_size, device=str(device),
        mixed_precision_dtype=precision.compute_dtype if precision.mixed else None, softmax_dtype=torch.float32,
        **protocol_arguments,
    )  # fmt: skip
    name = lm_eval_task_name(data.spec.name, config.protocol)
    docs = len(data.splits["eval"][: config.limit])
    with (
        lm_eval_provenance(),
        lm_eval_bars_off(),
        phase("  eval", kind="eval", detail=f"{data.spec.name}, {docs} docs"),
        torch.inference_mode(),
    ):
        output = lm_eval.simple_evaluate(
            model=lm,
            tasks=[task_config(data, config.protocol)],
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
        clean_metric_name(key): float(value) for key, value in output["results"][name].items() if "," in key and isinstance(value, (int, float))
    }
    samples = [_sample_record(s) for s in output.pop("samples", {}).get(name, [])]
    results_json = json.loads(json.dumps(output, default=str))  # drop objects MLflow can't serialise
    return EvalResult(metrics=metrics, lm_eval_task=name, results_json=results_json, samples=samples)
