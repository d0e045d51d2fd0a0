"""`adamole-bench lm-eval ARGS`: lm-eval's own CLI (`lm-eval run ARGS`) on our tasks and on any export.

It is lm-eval's entry point, with what it would lack or do wrong here set up first:
- our task YAMLs (tasks/lm_eval/) as `--include_path`, named `<task>_<protocol>` (`copa_letter`,
  `boolq_cloze`); when every task asked for is ours, lm-eval's own ~10k are not indexed (~58 s);
- the mixtures registered with PEFT, so `--model hf --model_args pretrained=BASE,peft=EXPORT` loads them;
- the model type `adamole-bench` (`--model_args pretrained=EXPORT`): an `adamole-bench export` folder
  on the base it was trained on (an embedded base has no path to give `hf`), or a merged folder,
  scored as `run` scores it: the same scorer, fp32 log-softmax, the precision `auto` picks;
- our commit recorded where lm-eval runs `git describe` (which prints `fatal:` outside a checkout);
- in a file or CI log, no progress bars (lm-eval passes disable=False to its own).
"""

# Imported where used: lm_eval (as in scoring.py)
import argparse
import fnmatch
import functools
import logging
import sys
from contextlib import ExitStack, contextmanager, nullcontext
from pathlib import Path
from typing import Any

import torch

from ...base.errors import UserError
from ...base.upstream import LM_EVAL_EXPECTED_WARNINGS, lm_eval_cli, lm_eval_task_manager_replaced, lm_eval_tasks_not_found
from ...methods.registry import ADAPTER_CONFIG
from ...tasks.registry import LM_EVAL_DIR, PROTOCOLS, all_tasks, lm_eval_task_name
from ..model.adapters import load_adapter
from ..model.loading import keeps_logits, load_base_model
from ..model.precision import resolve_precision
from .scoring import continuation_scorer, lm_eval_bars_off, lm_eval_provenance, protocol_scorer

MODEL_TYPE = "adamole-bench"
USAGE = f"""adamole-bench lm-eval [LM-EVAL ARGS...]: lm-eval's own CLI with our tasks and exports.

Tasks are named <task>_<protocol>: a task of `adamole-bench list tasks` and a protocol of
{", ".join(PROTOCOLS)}, e.g. copa_letter, boolq_cloze (lm-eval globs work: 'copa_*').
Task YAMLs: {LM_EVAL_DIR} (the --include_path this command adds).

  adamole-bench lm-eval --model {MODEL_TYPE} --model_args pretrained=EXPORT --tasks copa_letter --limit 50
  adamole-bench lm-eval --model hf --model_args pretrained=EXPORT/merged --tasks copa_letter

EXPORT is a folder `adamole-bench export` wrote (LoRA or any mixture; its base is loaded as recorded,
or pass base_model=NAME|PATH); model_args also take precision=auto|fp32|bf16 (default auto, as `run`)
and, for the reference_* tasks, protocol=reference_logits|reference_generate: their token rules live in
the scorer (`hf` scores those tasks with lm-eval's own tokenization).

lm-eval's options follow (`lm-eval run --help`):
"""


def our_task_names() -> list[str]:
    return [lm_eval_task_name(task, protocol) for task in all_tasks() for protocol in PROTOCOLS]


def _requested(args: list[str]) -> argparse.Namespace:
    """The two lm-eval options this command acts on, read as lm-eval's parser reads them."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--tasks", "-t", nargs="+", default=None)
    parser.add_argument("--include_path", default=None)
    return parser.parse_known_args(args)[0]


def only_ours(tasks: list[str] | None) -> bool:
    """Whether every requested task (name or glob, comma- or space-separated) is one of ours."""
    patterns = [pattern for entry in tasks or () for pattern in entry.split(",") if pattern]
    names = our_task_names()
    return bool(patterns) and all(fnmatch.filter(names, pattern) for pattern in patterns)


@contextmanager
def _without_default_tasks():
    """lm-eval's CLI builds its TaskManager with the defaults; our tasks alone need none of them."""
    from lm_eval.tasks import TaskManager

    with lm_eval_task_manager_replaced(functools.partial(TaskManager, include_defaults=False)):
        yield


@functools.cache
def _drop_expected_warnings() -> None:
    """lm-eval's warnings about what this command does on purpose: none is something the user could act on."""
    for name, phrases in LM_EVAL_EXPECTED_WARNINGS.items():

        def unexpected(record: logging.LogRecord, phrases: tuple[str, ...] = phrases) -> bool:
            return not any(phrase in record.getMessage() for phrase in phrases)

        logging.getLogger(name).addFilter(unexpected)


def _checked(protocol: str) -> str:
    if protocol not in PROTOCOLS:
        raise UserError(f"unknown protocol '{protocol}' in --model_args; choose one of {', '.join(PROTOCOLS)} (the one the task name ends in)")
    return protocol


@functools.cache
def register_export_model() -> type:
    """Register the `adamole-bench` model type with lm-eval (once per process)."""
    from lm_eval.api.registry import register_model

    scorer: Any = continuation_scorer()  # an HFLM subclass made on first use (lm-eval is slow to import, and untyped)

    @register_model(MODEL_TYPE)
    class ExportScorer(scorer):
        """`pretrained`: an export folder (its base loaded as recorded, or `base_model`) or a model `run` takes.
        `protocol`: a reference_* protocol's token rules (they live in the scorer, not in the task)."""

        def __new__(cls, *args, protocol: str = "letter", **kwargs):
            return super().__new__(protocol_scorer(cls, _checked(protocol))[0])

        def __init__(
            self,
            pretrained: str,
            base_model: str | None = None,
            precision: str = "auto",
            device: str | None = None,
            protocol: str = "letter",
            **kwargs,
        ):
            if not device or (device.startswith("cuda") and not torch.cuda.is_available()):
                device = "cuda" if torch.cuda.is_available() else "cpu"  # as HFLM does: lm-eval's default is cuda:0
            folder = Path(pretrained).expanduser()
            if (folder / ADAPTER_CONFIG).is_file():
                loaded = load_adapter(folder, base_model=base_model, device=device)
                model, tokenizer, name, method = loaded.model, loaded.tokenizer, loaded.base.name, loaded.method
            else:  # a merged export, any model folder or name `run` takes
                base = load_base_model(str(pretrained), device=device)
                model, tokenizer, name, method = base.model, base.tokenizer, base.name, None
            resolved = resolve_precision(precision, device, name)
            if method is not None:  # as a trial scores (LoRA merged in fp32); the process ends with the model in this state
                self._scoring = ExitStack()
                model = self._scoring.enter_context(method.scoring(model, resolved.compute_dtype))
            self.trims_logits = keeps_logits(model)
            super().__init__(
                pretrained=model.eval(), tokenizer=tokenizer, softmax_dtype=torch.float32,
                mixed_precision_dtype=resolved.compute_dtype if resolved.mixed else None, **protocol_scorer(ExportScorer, protocol)[1] | kwargs,
            )  # fmt: skip

    return ExportScorer


def main(args: list[str]) -> None:
    """Run lm-eval's CLI on `args`, the words after `adamole-bench lm-eval`."""
    if not args or args in (["-h"], ["--help"]):
        print(USAGE, flush=True)
        args = ["run", "--help"]
    cli_evaluate = lm_eval_cli()  # lm-eval takes seconds to import: only this command needs it

    # Importing it registers the mixtures with PEFT, before lm-eval can load a model (it imports peft: slow).
    from ...methods import peft_integration  # noqa: F401

    register_export_model()
    _drop_expected_warnings()
    requested = _requested(args)
    if requested.include_path is None:
        args = [*args, "--include_path", str(LM_EVAL_DIR)]
    saved, sys.argv = sys.argv, ["lm-eval", *args]
    try:
        with (
            lm_eval_provenance(),
            _without_default_tasks() if only_ours(requested.tasks) else nullcontext(),
            nullcontext() if sys.stderr.isatty() else lm_eval_bars_off(),  # in a file or CI log, plain lines only (README, Output)
        ):
            cli_evaluate()
    except ValueError as err:  # lm-eval's check of the task names, before any model is loaded
        if not lm_eval_tasks_not_found(err):
            raise
        raise UserError(
            f"{err}; ours are <task>_<protocol>: a task of `adamole-bench list tasks` and one of {', '.join(PROTOCOLS)}, e.g. copa_letter"
        ) from None
    finally:
        sys.argv = saved
