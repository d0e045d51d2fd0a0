"""Step checkpoints: a trial killed mid-training (SIGKILL, SIGTERM, SLURM's SIGUSR1, a lost Ray worker)
resumes where it stopped, and ends bit for bit where an uninterrupted run ends.

A checkpoint is taken at an optimizer-step boundary (never mid gradient accumulation) and holds what the
next steps read: the trainable parameters and every buffer, the optimizer, LR schedule and grad scaler,
the RNG states (torch CPU and CUDA, python, numpy: dropout and expert dropout draw from them), the losses
so far, and the data position: the pass over the data, the batches read in it, and the order generator's
state when the pass began, from which the pass is replayed. One file per trial, named by the trial's
identity (settings hash + code fingerprint) and seed, so other settings or code never resume it; written
whole or not at all (temp file + rename) with a SHA-256 trailer, so a damaged file is never loaded. A trial
trained by several processes keeps one such file per rank and step (rank_checkpoints.py).
"""

import hashlib
import io
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from rich.console import Console
from rich.markup import escape

from ...base.paths import atomic_write, runs_dir
from ..settings.config import TrainConfig
from .data import LengthGroupedBatches

FORMAT = 1  # bump when the file's contents change: an older file is then ignored, never misread
DIGEST = hashlib.sha256().digest_size


def checkpoint_folder(config: TrainConfig) -> Path:
    """`train.checkpoint_dir` (shared disk for several machines), else `checkpoints/` beside the local store."""
    return Path(config.checkpoint_dir).expanduser().resolve() if config.checkpoint_dir else runs_dir() / "checkpoints"


class StepCheckpoints(Protocol):
    """What the training loop saves to and resumes from: one file (Checkpoint), or one per rank (rank_checkpoints.py)."""

    @property
    def announces(self) -> bool: ...  # whether this process prints "resuming from step k" (rank 0 only)

    def due(self, step: int, steps: int) -> bool: ...

    def save(self, state: dict) -> None: ...

    def load(self, steps: int | None = None) -> dict | None: ...

    def remove(self) -> None: ...


@dataclass(frozen=True)
class Checkpoint:
    """Where one trial's checkpoint lives, and how often it is taken (every `every` steps and the last)."""

    path: Path
    identity: str  # also inside the file: a copied or renamed file of another trial is refused
    every: int
    fallback: str = "training from step 0"  # what happens when the file is ignored (said with the reason)

    @property
    def announces(self) -> bool:
        return True

    @classmethod
    def for_trial(cls, identity: str, seed: int, config: TrainConfig) -> "Checkpoint":
        return cls(checkpoint_folder(config) / f"{identity}-seed{seed}.ckpt", identity, config.checkpoint_every)

    def due(self, step: int, steps: int) -> bool:
        return step % self.every == 0 or step == steps

    def save(self, state: dict) -> None:
        buffer = io.BytesIO()
        torch.save({"format": FORMAT, "identity": self.identity, **state}, buffer)
        payload = buffer.getvalue()
        atomic_write(self.path, payload + hashlib.sha256(payload).digest())

    def load(self, steps: int | None = None) -> dict | None:
        """The saved state, or None: no file, or one that is damaged, not this trial's or (given `steps`) for
        another number of steps (said in one line)."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return None
        payload, digest = data[:-DIGEST], data[-DIGEST:]
        if len(data) <= DIGEST or hashlib.sha256(payload).digest() != digest:
            _ignored(self.path, "damaged (truncated or overwritten)", self.fallback)
            return None
        state = torch.load(io.BytesIO(payload), weights_only=True)  # tensors and plain values only: no code runs
        if state.get("format") != FORMAT or state.get("identity") != self.identity:
            why = f"from another trial or version (identity {state.get('identity')}, format {state.get('format')})"
            _ignored(self.path, why, self.fallback)
            return None
        if steps is not None and state["steps"] != steps:
            _ignored(self.path, f"for {state['steps']} steps, not {steps}", self.fallback)
            return None
        return state

    def remove(self) -> None:
        """The checkpoint, and any temp file a process killed while writing it left behind (base/paths.atomic_write)."""
        for leftover in self.path.parent.glob(f".{self.path.name}.*.tmp"):
            leftover.unlink(missing_ok=True)
        self.path.unlink(missing_ok=True)


def _ignored(path: Path, why: str, then: str) -> None:
    Console(soft_wrap=True).print(f"  [yellow]checkpoint {escape(str(path))} is {escape(why)}: ignored, {escape(then)}[/]")


class Batches:
    """The endless batch stream of a trial (each pass reshuffles from the seeded order generator) and its
    position: the pass, the batches read in it, and the generator's state when the pass began."""

    def __init__(self, loader: torch.utils.data.DataLoader):
        self.loader = loader
        generator = loader.generator
        if generator is None:  # ours (LengthGroupedBatches) holds its own
            assert isinstance(loader.batch_sampler, LengthGroupedBatches), "a resumable pass needs a seeded order"
            generator = loader.batch_sampler.generator
        self.generator = generator
        self.epoch = self.read = 0
        self._pass: Iterator | None = None
        self._pass_start: torch.Tensor | None = None

    def __iter__(self):
        return self

    def __next__(self):
        while True:
            if self._pass is None:
                self._start_pass(self.generator.get_state())
            assert self._pass is not None  # _start_pass opened it
            try:
                batch = next(self._pass)
            except StopIteration:
                self._pass = None
                self.epoch += 1
                continue
            self.read += 1
            return batch

    def _start_pass(self, generator_state: torch.Tensor) -> None:
        self._pass_start = generator_state
        self.generator.set_state(generator_state)
        self._pass, self.read = iter(self.loader), 0

    def position(self) -> dict:
        return {"epoch": self.epoch, "batch": self.read, "generator": self._pass_start}

    def seek(self, position: dict) -> None:
        """Replay the saved pass up to its position: the same draws, in the same order, as the first time."""
        self._start_pass(position["generator"])
        self.epoch = position["epoch"]
        assert self._pass is not None  # _start_pass opened it
        for _ in range(position["batch"]):
            next(self._pass)
        self.read = position["batch"]


def rng_states() -> dict:
    keys, position, has_gauss, gauss = np.random.get_state()[1:]  # type: ignore[index]  # numpy's stub types the default as legacy=False (a dict); it is legacy=True, a tuple
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": random.getstate(),
        "numpy": (torch.from_numpy(keys.astype(np.int64)), position, has_gauss, gauss),  # as tensors: loadable with weights_only
    }


def set_rng_states(states: dict) -> None:
    torch.set_rng_state(states["torch"])
    if states["cuda"]:
        torch.cuda.set_rng_state_all(states["cuda"])
    random.setstate(states["python"])
    keys, position, has_gauss, gauss = states["numpy"]
    np.random.set_state(("MT19937", keys.numpy().astype(np.uint32), position, has_gauss, gauss))


def trained_state(model: torch.nn.Module) -> dict:
    """What training changes in the model: its trainable parameters, and every buffer (methods may keep state there)."""
    params = {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
    return {"params": params, "buffers": {name: b.detach().clone() for name, b in model.named_buffers()}}


def restore_trained_state(model: torch.nn.Module, state: dict) -> None:
    params = {name: p for name, p in model.named_parameters() if p.requires_grad}
    buffers = dict(model.named_buffers())
    if params.keys() != state["params"].keys() or buffers.keys() != state["buffers"].keys():
        raise ValueError("the checkpoint's parameters are not this model's")  # same identity, so a harness bug
    with torch.no_grad():
        for name, value in [*state["params"].items(), *state["buffers"].items()]:
            (params[name] if name in params else buffers[name]).copy_(value)


class _Progress(Protocol):
    """What a checkpoint reads and restores of loop.TrainResult (loop.py imports this module)."""

    seconds: float
    resumed_from: int


@dataclass
class TrainingState:
    """The live objects of one training run that a checkpoint saves and puts back."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    batches: Batches
    result: _Progress  # loop.TrainResult: its losses, tokens and seconds so far
    started: float  # perf_counter() when this process began training

    def save(self, checkpoint: StepCheckpoints, step: int, steps: int, reason: str) -> None:
        history = {**vars(self.result), "seconds": self.result.seconds + time.perf_counter() - self.started}
        checkpoint.save(
            {
                "step": step,
                "steps": steps,
                "reason": reason,
                **trained_state(self.model),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(),
                "rng": rng_states(),
                "data": self.batches.position(),  # at an optimizer-step boundary: no micro-step is half done
                "result": history,
            }
        )

    def resume(self, checkpoint: StepCheckpoints, steps: int) -> int:
        """Put the checkpoint's state back, if there is one for this trial: the first step still to run."""
        saved = checkpoint.load(steps)
        if saved is None:
            return 1
        restore_trained_state(self.model, saved)
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        self.scaler.load_state_dict(saved["scaler"])
        self.batches.seek(saved["data"])  # replaying the pass may draw from the global RNG (the DataLoader's seed)...
        set_rng_states(saved["rng"])  # ...so the RNG states go back after it
        for name, value in saved["result"].items():
            setattr(self.result, name, value)
        self.result.resumed_from = saved["step"]
        if checkpoint.announces:
            Console(soft_wrap=True).print(f"  resuming from step {saved['step']} of {steps} (checkpoint saved {escape(saved['reason'])})")
        return saved["step"] + 1
