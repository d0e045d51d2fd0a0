"""The training loop, readable top to bottom.

Our own loop rather than HF Trainer: methods add an auxiliary loss through one hook
(`method.aux_loss`), every step is visible here, and nothing depends on Trainer internals that
change between transformers releases (the reason PEFT's method_comparison avoids it too).
"""

import ctypes
import gc
import math
import random
import signal
import threading
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Self

import numpy as np
import psutil
import torch

from ...base.errors import Diverged, UserError
from ...base.progress import phase
from ..model.loading import keeps_logits
from ..model.precision import Precision
from ..settings.config import TrainConfig
from ..store.liveness import Terminated, signals_deferred, terminated
from . import distributed
from .checkpoint import Batches, Checkpoint, StepCheckpoints, TrainingState
from .checkpointing import gradient_checkpointing
from .data import EncodedExamples, LengthGroupedBatches, hf_length_grouped_batches


@dataclass
class TrainResult:
    steps: int = 0
    losses: list[float] = field(default_factory=list)  # task loss per optimizer step
    aux_losses: list[float] = field(default_factory=list)  # unweighted auxiliary loss per step
    tokens: int = 0  # non-pad tokens processed
    seconds: float = 0.0
    skipped_steps: int = 0  # fp16: steps the grad scaler skipped (inf/nan gradients), not divergences
    resumed_from: int = 0  # the step a checkpoint resumed this run from (0: it trained from the start)

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0


class StoppedAtStep(Terminated):
    """SIGTERM/SIGUSR1 taken at an optimizer-step boundary, after the checkpoint was saved: with several
    processes every rank raises it after the same step, so they can meet once more before they exit."""


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)


class PeakMemory:
    """One trial's own peak memory in MB. The process's lifetime peak (ru_maxrss) made every trial
    inherit the peaks of the trials before it.

    CUDA: the allocator's peak since a reset at the start. CPU: the resident set size, sampled (every
    50 ms by default) by a background thread. Before the start, cycles are collected and freed heap
    pages handed back to the system (glibc's malloc_trim), so the level at the start is what is alive,
    not what an earlier trial left cached. (Linux can reset its own high-water mark, but that also
    resets the ru_maxrss that `/usr/bin/time -v` reports for the whole run.)
    """

    def __init__(self, device: torch.device, interval: float = 0.05):
        self.device, self.interval = device, interval  # seconds between samples
        self.start = self.sampled = 0.0
        self._stopped = threading.Event()
        self._sampler: threading.Thread | None = None

    def __enter__(self) -> Self:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start = torch.cuda.memory_allocated(self.device) / 2**20
            return self
        gc.collect()
        release_free_heap()
        self._process = psutil.Process()
        self.start = self.sampled = self._rss_mb()
        self._sampler = threading.Thread(target=self._sample, name="peak-memory", daemon=True)
        self._sampler.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stopped.set()
        if self._sampler is not None:
            self._sampler.join()

    def _rss_mb(self) -> float:
        return self._process.memory_info().rss / 2**20

    def _sample(self) -> None:
        while not self._stopped.wait(self.interval):
            self.sampled = max(self.sampled, self._rss_mb())

    def peak_mb(self) -> float:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        return max(self.sampled, self._rss_mb())

    def metrics(self) -> dict[str, float]:
        """The peak so far, and how far it rose above the level at the start."""
        peak = self.peak_mb()
        return {"memory/peak_mb": peak, "memory/peak_delta_mb": peak - self.start}


def release_free_heap() -> None:
    """glibc keeps freed memory resident for reuse; malloc_trim(0) returns its free pages (elsewhere: nothing to do)."""
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (AttributeError, OSError, TypeError):  # not glibc
        return
    trim(0)


def check_finite(step: int, loss: float, aux_loss: float, grad_norm: float, grads_scaled: bool = False) -> None:
    """Stop a diverged trial before a NaN/inf reaches the weights (the sweep records it FAILED).

    With an fp16 GradScaler (`grads_scaled`), an inf/NaN gradient norm is the scaler's overflow signal:
    it skips that optimizer step and lowers its scale, which is normal operation, not divergence, so
    only the losses are checked then.
    """
    checks = {"loss": loss, "aux loss": aux_loss} | ({} if grads_scaled else {"grad norm": grad_norm})
    for what, value in checks.items():
        if not math.isfinite(value):
            raise Diverged(step, what, value)


def supervised_loss(model: torch.nn.Module, batch: dict, num_items: float | None = None) -> torch.Tensor:
    """transformers' shifted causal-LM cross-entropy, with logits only at positions whose next token is
    supervised: with answer-only labels that is a few positions per example instead of all, so the
    49k-wide lm_head and its softmax no longer dominate a small model's step. Mean over supervised
    tokens, or their sum / `num_items` (multi-process: the global count, as transformers does)."""
    targets = batch["labels"][:, 1:]
    keep = (targets != -100).any(dim=0).nonzero().squeeze(1)  # positions any row of the batch needs
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], logits_to_keep=keep, use_cache=False).logits
    chosen = targets[:, keep]
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # fp32 from bf16/fp16, float64 stays
    total = torch.nn.functional.cross_entropy(logits.flatten(0, 1), chosen.flatten(), ignore_index=-100, reduction="sum")
    return total / (num_items if num_items is not None else (chosen != -100).sum())


def training_loader(examples: EncodedExamples, config: TrainConfig, seed: int, pad_id: int, ctx: distributed.Context) -> torch.utils.data.DataLoader:
    """The batches a trial trains on: a seeded shuffle, optionally grouped by length (ours, or HF
    Trainer's as in the reference), padded as configured; with several processes each reads the same
    global batch and keeps its slice (see distributed.py)."""
    global_batch = config.batch_size * ctx.world_size
    generator = torch.Generator().manual_seed(seed)
    if config.group_by_length and config.length_grouping == "hf":
        batches = hf_length_grouped_batches(examples.length, len(examples), global_batch, config.grad_accum, generator, drop_last=ctx.enabled)
        order = {"batch_sampler": batches, "generator": generator}  # the DataLoader's seed draw comes first, as in the Trainer
    elif config.group_by_length:
        order = {"batch_sampler": LengthGroupedBatches(examples.length, len(examples), global_batch, generator, drop_last=ctx.enabled)}
    else:
        order = {"batch_size": global_batch, "shuffle": True, "generator": generator, "drop_last": ctx.enabled}
    pad = examples.eos_id if config.pad_token == "eos" else pad_id
    collate = distributed.ShardedCollate(pad, ctx, side=config.padding_side, multiple_of=config.pad_to_multiple_of)
    return torch.utils.data.DataLoader(examples, collate_fn=collate, **order)  # type: ignore[arg-type]  # torch types it Dataset; any sized indexable works


def train(
    model: torch.nn.Module,
    method,
    examples: EncodedExamples | list[dict],
    config: TrainConfig,
    seed: int,
    pad_id: int,
    precision: Precision | None = None,
    on_step: Callable[[int, dict], None] | None = None,
    checkpoint: StepCheckpoints | None = None,
) -> TrainResult:
    """Train the model's trainable parameters; with `checkpoint`, resume from it and save it as it says,
    and on SIGTERM/SIGUSR1 finish the step, save, then raise `Terminated` (harness/train/checkpoint.py;
    several processes: every rank its own files, rank_checkpoints.py, and a signal to one stops them all)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params or not examples:
        return TrainResult()  # e.g. the `base` method: nothing to train
    assert isinstance(examples, EncodedExamples)  # [] means nothing to train, returned above
    device = params[0].device
    precision = precision or Precision("fp32", device.type)
    set_seed(seed)

    ctx = distributed.context()
    global_batch = config.batch_size * ctx.world_size
    loader = training_loader(examples, config, seed, pad_id, ctx)
    if not len(loader):
        raise UserError(f"{len(examples)} training examples do not fill one global batch of {global_batch}")
    steps = config.max_steps or math.ceil(len(loader) * config.epochs / config.grad_accum)
    batches = Batches(loader)
    if ctx.enabled and isinstance(checkpoint, Checkpoint):
        raise ValueError("several processes need one checkpoint file per rank: rank_checkpoints.trial_checkpoint")
    train_model = distributed.wrap(model, method, ctx)
    sliced = keeps_logits(model)

    # Optimizer and schedule: AdamW as in the reference (betas 0.9/0.999, eps 1e-8).
    from transformers import get_scheduler

    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay, betas=(0.9, 0.999), eps=1e-8)
    scheduler = get_scheduler(config.lr_schedule, optimizer, num_warmup_steps=config.warmup_steps, num_training_steps=steps)
    scaler = precision.grad_scaler()  # fp16 on CUDA: loss scaling; otherwise every call is a pass-through

    result = TrainResult()
    model.train()
    started = time.perf_counter()
    training = TrainingState(model, optimizer, scheduler, scaler, batches, result, started)
    first = training.resume(checkpoint, steps) if checkpoint else 1
    stops = signals_deferred() if checkpoint else nullcontext(lambda: None)  # without a checkpoint a signal stops at once
    with (
        gradient_checkpointing(model, config.gradient_checkpointing),
        phase("  train", total=steps, completed=first - 1, kind="train", loss=float("nan")) as bar,  # a terminal only (base/progress.py)
        stops as stop_signal,
    ):
        for step in range(first, steps + 1):
            task_loss = aux_total = 0.0
            for micro in range(config.grad_accum):
                batch, label_tokens = next(batches)
                batch = {k: v.to(device) for k, v in batch.items()}
                # Multi-process: sum over this slice / (global tokens / world) → DDP's average is the global mean.
                num_items = label_tokens / ctx.world_size if ctx.enabled else None
                scale = {} if num_items is None else {"num_items_in_batch": num_items}
                with distributed.gradient_sync(train_model, last_micro_step=micro == config.grad_accum - 1):
                    with precision.autocast():  # the loss comes out fp32 (the logits are upcast first)
                        loss = supervised_loss(train_model, batch, num_items) if sliced else train_model(**batch, **scale, use_cache=False).loss
                        aux = method.aux_loss(model)
                    total = loss if aux is None else loss + method.aux_loss_coeff * aux.float()
                    scaler.scale(total / config.grad_accum).backward()
                task_loss += ctx.mean(loss) / config.grad_accum
                aux_total += 0.0 if aux is None else ctx.mean(aux) / config.grad_accum
                result.tokens += int(batch["attention_mask"].sum())
            scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
            grad_norm = torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
            check_finite(step, task_loss, aux_total, float(grad_norm), grads_scaled=scaler.is_enabled())
            loss_scale = scaler.get_scale()
            scaler.step(optimizer)  # skipped when a scaled gradient overflowed; the scale then drops
            scaler.update()
            skipped = scaler.get_scale() < loss_scale
            result.skipped_steps += skipped
            if not skipped:  # the schedule counts applied updates (as HF Trainer does)
                scheduler.step()
            optimizer.zero_grad(set_to_none=True)

            result.losses.append(task_loss)
            result.aux_losses.append(aux_total)
            if on_step:
                on_step(
                    step,
                    {
                        "train/loss": task_loss,
                        "train/aux_loss": aux_total,
                        "train/lr": scheduler.get_last_lr()[0],
                        "train/grad_norm": float(grad_norm),
                    },
                )
            bar.update(advance=1, loss=task_loss)
            signum = ctx.stop_signal(stop_signal()) if checkpoint else None  # any rank's: every rank saves this step and stops
            if checkpoint and (signum or checkpoint.due(step, steps)):
                training.save(checkpoint, step, steps, f"on {signal.Signals(signum).name}" if signum else f"at step {step}")
            if signum:
                terminated(signum)  # from now on a second stop signal kills at once
                raise StoppedAtStep(signum)
    result.steps = steps
    result.tokens = ctx.total(result.tokens)
    result.seconds += time.perf_counter() - started
    model.eval()
    return result
