"""Multi-process data-parallel training with torch.distributed (DDP), launched by torchrun or accelerate.

    torchrun --nproc_per_node 2 -m adamole_bench.cli run --methods lora --tasks copa

Every process reads the same seeded global batch (train.batch_size × world size examples) and
keeps its own contiguous slice, so 2 processes × batch b see exactly the examples 1 process ×
batch 2b sees. Each slice's loss is summed over its answer tokens and divided by the global
token count / world size, so DDP's gradient average equals the single-process mean over all
tokens. Auxiliary losses are computed per process on its slice and averaged (a load-balancing
loss over 2b tokens is not exactly the mean over two b-token halves). Only rank 0 evaluates,
prints and writes to MLflow; the other ranks train and wait.
"""

import functools
import os
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import torch
from torch import nn

from ..store.tracking import Tracker
from .data import collate


@dataclass(frozen=True)
class Context:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def device(self, device: torch.device) -> torch.device:
        """One GPU per process: `cuda` becomes `cuda:<local rank>`."""
        return torch.device("cuda", self.local_rank) if self.enabled and device.type == "cuda" else device

    def mean(self, value: torch.Tensor) -> float:
        """The mean of a scalar over all processes (for logging; gradients are averaged by DDP)."""
        if not self.enabled:
            return float(value.detach())
        value = value.detach().clone().float()
        torch.distributed.all_reduce(value)
        return float(value) / self.world_size

    def total(self, value: int) -> int:
        return self._reduce(value, torch.distributed.ReduceOp.SUM) if self.enabled else value

    def stop_signal(self, signum: int | None) -> int | None:
        """A stop signal any rank got (the largest number), on every rank: a signal may reach one rank only
        (a Ray gang member), and all ranks must save at the same step and stop together, or the others wait
        for it in the next all-reduce. One integer all-reduce per optimizer step (docs/distributed.md)."""
        if not self.enabled:
            return signum
        return self._reduce(signum or 0, torch.distributed.ReduceOp.MAX) or None

    def everyone(self, flag: bool) -> bool:
        """Whether `flag` holds on every rank (and a barrier: no rank passes until all got here)."""
        return bool(self._reduce(int(flag), torch.distributed.ReduceOp.MIN)) if self.enabled else flag

    def gather(self, value) -> list:
        """Every rank's value (any picklable object), in rank order."""
        if not self.enabled:
            return [value]
        values: list = [None] * self.world_size
        torch.distributed.all_gather_object(values, value)
        return values

    def _reduce(self, value: int, op) -> int:
        on = torch.device("cuda", self.local_rank) if torch.distributed.get_backend() == "nccl" else torch.device("cpu")  # NCCL: GPU tensors only
        tensor = torch.tensor(value, dtype=torch.long, device=on)
        torch.distributed.all_reduce(tensor, op=op)
        return int(tensor)

    def broadcast(self, value):
        """Rank 0's value on every rank (any picklable object)."""
        if not self.enabled:
            return value
        box = [value]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def shard(self, items: list) -> list:
        """This rank's contiguous slice of a global batch."""
        size = len(items) // self.world_size
        return items[self.rank * size : (self.rank + 1) * size]


@functools.cache
def context() -> Context:
    """The process group from torchrun/accelerate environment variables, initialised once (gloo on CPU)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return Context()
    if not torch.distributed.is_initialized():
        if torch.cuda.is_available():  # NCCL's object collectives use the current device: each rank its own GPU, not all cuda:0
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        torch.distributed.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return Context(torch.distributed.get_rank(), torch.distributed.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def join(rank: int, world_size: int, address: str, port: int) -> Context:
    """Join a process group that another launcher forms (the Ray executor's workers of one trial) through the
    environment torchrun would set, so the rest of this process sees that group as under torchrun. Each worker
    sees only its own GPUs (Ray sets CUDA_VISIBLE_DEVICES), so its local rank is 0."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK="0", MASTER_ADDR=address, MASTER_PORT=str(port))
    context.cache_clear()
    return context()


class ShardedCollate:
    """Global batch → (this rank's padded batch, answer tokens in the whole global batch)."""

    def __init__(self, pad_id: int, ctx: Context, **padding):
        self.pad_id, self.ctx, self.padding = pad_id, ctx, padding  # padding: data.collate's side and multiple_of

    def __call__(self, examples: list[dict]) -> tuple[dict[str, torch.Tensor], int]:
        # Causal LM losses predict token t+1 from t, so the first label never counts.
        label_tokens = sum(sum(label != -100 for label in e["labels"][1:]) for e in examples)
        return collate(self.ctx.shard(examples), self.pad_id, **self.padding), label_tokens


def wrap(model: nn.Module, method, ctx: Context) -> nn.Module:
    """DDP around the model when running multi-process; the model itself otherwise.

    Methods whose steps may leave some trainable parameters without a gradient (sparse routing
    computed by skipping experts) set `ddp_find_unused_parameters = True` on their Method class.
    The shared expert core computes every expert densely with zero weights, so it needs no search.
    """
    if not ctx.enabled:
        return model
    device = next(p for p in model.parameters() if p.requires_grad).device
    return nn.parallel.DistributedDataParallel(
        model,
        device_ids=[device.index] if device.type == "cuda" else None,
        find_unused_parameters=method.ddp_find_unused_parameters,
    )


def gradient_sync(model: nn.Module, last_micro_step: bool):
    """Skip DDP's all-reduce on all but the last micro-step of gradient accumulation."""
    if isinstance(model, nn.parallel.DistributedDataParallel) and not last_micro_step:
        return model.no_sync()
    return nullcontext()


class RankZeroTracker:
    """A Tracker that writes only on rank 0; other ranks get rank 0's answers and log nothing."""

    def __init__(self, tracker, ctx: Context):
        self._tracker, self._ctx = tracker, ctx
        self.uri = tracker.uri if tracker else "rank 0's store"

    def completed_trial(self, identity: str, seed: int) -> dict | None:
        found = self._tracker.completed_trial(identity, seed) if self._tracker else None
        return self._ctx.broadcast(found)  # every rank must skip (or run) the same trials

    def finished_elsewhere(self, *args, **kwargs) -> dict | None:
        return self._ctx.broadcast(self._tracker.finished_elsewhere(*args, **kwargs) if self._tracker else None)

    def claim_trial(self, *args, **kwargs) -> str | None:
        claimed = self._tracker.claim_trial(*args, **kwargs) if self._tracker else None
        return self._ctx.broadcast(claimed)

    def wait_for_trial(self, *args, **kwargs) -> tuple[str, dict]:
        return self._ctx.broadcast(self._tracker.wait_for_trial(*args, **kwargs) if self._tracker else None)

    @contextmanager
    def running(self, run_id: str | None, strict: bool = True):
        if self._tracker is None:
            yield run_id
            return
        with self._tracker.running(run_id, strict) as run_id:
            yield run_id

    def __getattr__(self, name: str):
        if self._tracker is not None:
            return getattr(self._tracker, name)
        return lambda *args, **kwargs: None  # log_* and set_tags on ranks other than 0


def rank_zero_tracker(tracker, experiment: str):
    """The sweep's tracker: created on rank 0 only (other ranks must not create MLflow runs)."""

    ctx = context()
    if not ctx.enabled:
        return tracker or Tracker(experiment)
    return RankZeroTracker((tracker or Tracker(experiment)) if ctx.is_main else None, ctx)
