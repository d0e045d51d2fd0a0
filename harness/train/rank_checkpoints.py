"""Step checkpoints of a trial trained by several processes (torchrun, a Ray gang): one file per rank and
saved step, and the ranks agreeing on the step they resume from.

Every rank saves its own state at the same optimizer-step boundaries: its RNG states and its slice's token
count differ from the others'; the parameters and the optimizer are equal under DDP, saved per rank anyway
to keep one code path (checkpoint.py's TrainingState). A file is `<identity>-seed<seed>-rank<r>of<w>-step<k>.ckpt`,
so another world size never reads it (its identity differs too: train.world_size is in it).

A kill (SIGKILL, a lost node) can stop one rank in the middle of a save that another rank finished, so the
ranks may hold different steps. Hence a rank removes its older files only after a collective confirms that
every rank wrote the newer one, and on resume the ranks gather the steps each holds and take the newest one
that every rank holds and loads (a damaged file sends all ranks to the next older common step); with none,
every rank trains from step 0, and rank 0 says so in one line.
"""

import re
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from ..settings.config import TrainConfig
from .checkpoint import Checkpoint, StepCheckpoints, checkpoint_folder
from .distributed import Context


def trial_checkpoint(identity: str, seed: int, config: TrainConfig, ctx: Context) -> StepCheckpoints:
    """The step checkpoints of one trial: its one file, or one file per rank and step when several processes train it."""
    if not ctx.enabled:
        return Checkpoint.for_trial(identity, seed, config)
    return RankCheckpoints(checkpoint_folder(config), identity, seed, config.checkpoint_every, ctx)


def newest_common(held: list[list[int]]) -> list[int]:
    """The steps every rank holds, newest first."""
    common = set(held[0]).intersection(*held[1:]) if held else set()
    return sorted(common, reverse=True)


@dataclass(frozen=True)
class RankCheckpoints:
    """This rank's checkpoint files of one trial, and the collectives that keep the ranks at one step."""

    folder: Path
    identity: str
    seed: int
    every: int
    ctx: Context

    @property
    def announces(self) -> bool:
        return self.ctx.is_main

    @property
    def _prefix(self) -> str:
        return f"{self.identity}-seed{self.seed}-rank{self.ctx.rank}of{self.ctx.world_size}-step"

    def file(self, step: int) -> Checkpoint:
        return Checkpoint(self.folder / f"{self._prefix}{step}.ckpt", self.identity, self.every, "trying an older step every rank holds")

    def held(self) -> list[int]:
        """The steps this rank has a file for (by name; whether each loads is found on resume)."""
        pattern = re.compile(re.escape(self._prefix) + r"(\d+)\.ckpt")
        return sorted(int(m.group(1)) for path in self.folder.glob(f"{self._prefix}*.ckpt") if (m := pattern.fullmatch(path.name)))

    def due(self, step: int, steps: int) -> bool:
        return step % self.every == 0 or step == steps

    def save(self, state: dict) -> None:
        """Write this rank's file for the state's step; once every rank has written its own, drop the older ones."""
        step = state["step"]
        self.file(step).save(state)
        if self.ctx.everyone(True):  # a barrier: every rank's file for `step` is on disk (fsynced) now
            for older in self.held():
                if older < step:
                    self.file(older).remove()

    def load(self, steps: int | None = None) -> dict | None:
        """This rank's state at the newest step every rank holds and loads, or None on every rank."""
        held = self.ctx.gather(self.held())
        for step in newest_common(held):
            state = self.file(step).load(steps)
            if self.ctx.everyone(state is not None):
                return state
        if self.ctx.is_main and any(held):
            ranks = "; ".join(f"rank {rank}: {', '.join(map(str, steps_held)) or 'none'}" for rank, steps_held in enumerate(held))
            Console(soft_wrap=True).print(f"  [yellow]no checkpoint step that every rank holds and loads ({escape(ranks)}): training from step 0[/]")
        return None

    def remove(self) -> None:
        """This rank's files of the trial, and the temp files of a save killed mid-write."""
        for step in self.held():
            self.file(step).remove()
        for leftover in self.folder.glob(f".{self._prefix}*.tmp"):
            leftover.unlink(missing_ok=True)
