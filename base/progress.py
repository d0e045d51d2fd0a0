"""Progress while a sweep runs. In a terminal: one sweep line (trials done and left, an ETA) above the
current trial's bar (training steps, then evaluation). Redirected to a file or a CI log: no bars at
all, only the plain per-trial lines the sweep prints, and the progress bars of transformers, datasets,
huggingface_hub and lm-eval are switched off too (`quiet_third_party_bars`)."""

import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, ProgressColumn, Task, TextColumn
from rich.text import Text

_active: Progress | None = None  # the sweep's display while one runs: trial bars join it


def interactive(console: Console) -> bool:
    """Bars only where a person watches: a terminal that can redraw (not a CI log that FORCE_COLOR
    makes Rich treat as one; TTY_INTERACTIVE=1 insists), and not a silenced DDP rank."""
    if not console.is_interactive or console.quiet:
        return False
    isatty = getattr(console.file, "isatty", None)
    return os.environ.get("TTY_INTERACTIVE") == "1" or bool(isatty and isatty())


def quiet_third_party_bars() -> None:
    """Output that is not a terminal gets no tqdm bars from the libraries we call: the environment
    switches are read when those libraries are imported (this runs first, in cli.py); the calls
    cover one already imported."""
    os.environ.setdefault("TQDM_DISABLE", "1")  # tqdm's own default, e.g. lm-eval building its requests
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if "datasets" in sys.modules:
        sys.modules["datasets"].disable_progress_bars()
    if "transformers" in sys.modules:
        sys.modules["transformers"].utils.logging.disable_progress_bar()


def _clock(seconds: float | None) -> str:
    if seconds is None:
        return "-:--:--"
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class _Status(ProgressColumn):
    """The text after a bar: trials done/left and ETA for the sweep; steps, loss and time left for
    training; time so far for evaluation."""

    def render(self, task: Task) -> Text:
        fields = task.fields
        if fields.get("kind") == "sweep":
            return Text(_sweep_status(task))
        if fields.get("kind") == "train":
            return Text(f"{task.completed:.0f}/{task.total:.0f} steps · loss {fields['loss']:.4f} · {_clock(task.time_remaining)} left")
        return Text(f"{fields.get('detail', '')} · {_clock(task.elapsed)}")


def _sweep_status(task: Task) -> str:
    fields, done, total = task.fields, int(task.completed), int(task.total or 0)
    counted = [f"{fields[k]} {k}" for k in ("skipped", "failed") if fields[k]]
    text = f"{done}/{total} trials done" + (f" ({', '.join(counted)})" if counted else "") + f", {total - done} left"
    if fields["ran"] and done < total:  # the mean time of the trials run here, skipped ones excluded
        per_trial = fields["ran_seconds"] / fields["ran"]
        text += f" · ETA {_clock(max(0.0, per_trial * (total - done) - (time.monotonic() - fields['current_since'])))}"
    elif done < total:
        text += " · ETA after the first trial"
    return text


def end_header(console: Console) -> None:
    """End a line begun with `SweepProgress.trial_started` (a log line; on the live display it is whole already)."""
    if _active is None or _active.disable:
        console.print()


class SweepProgress:
    """The sweep line; `trial_started` and `trial_done` around each trial move it on."""

    def __init__(self, progress: Progress, total: int):
        self.progress, self.console = progress, progress.console
        now = time.monotonic()
        self.task = progress.add_task("sweep", total=total, kind="sweep", skipped=0, failed=0, ran=0, ran_seconds=0.0, current_since=now)

    def trial_started(self, header: str) -> None:
        """Print `header` (e.g. `[2/6] lora/copa/seed0`). A log line stays open for what happens to the
        trial; on the live display a line must be whole or the next redraw erases it."""
        self.console.print(header, end=" " if self.progress.disable else "\n")

    def trial_done(self, status: str) -> None:
        """`status`: finished, skipped or failed (a sweep Outcome's)."""
        fields = self.progress.tasks[self.task].fields
        now = time.monotonic()
        update: dict[str, Any] = {"current_since": now}
        if status == "skipped":
            update["skipped"] = fields["skipped"] + 1
        else:
            update |= {"ran": fields["ran"] + 1, "ran_seconds": fields["ran_seconds"] + now - fields["current_since"]}
            if status == "failed":
                update["failed"] = fields["failed"] + 1
        self.progress.update(self.task, advance=1, **update)


def _display(console: Console) -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), _Status(), console=console, transient=True, disable=not interactive(console))


@contextmanager
def sweep_progress(console: Console, total: int) -> Iterator[SweepProgress]:
    """The sweep line on `console` for `total` trials; trial bars (`phase`) show below it meanwhile."""
    global _active  # noqa: PLW0603 - one live display per process, as rich allows
    with _display(console) as progress:
        _active = progress
        try:
            yield SweepProgress(progress, total)
        finally:
            _active = None


class Phase:
    """One bar of a trial (train or eval) on the sweep's display, or on its own outside a sweep."""

    def __init__(self, progress: Progress, task):
        self.progress, self.task = progress, task

    def update(self, **fields) -> None:
        self.progress.update(self.task, **fields)


@contextmanager
def phase(description: str, total: float | None = None, **fields) -> Iterator[Phase]:
    """A bar for one part of a trial, e.g. phase("  train", total=steps, kind="train", loss=nan);
    `total=None` pulses (evaluation: lm-eval reports no progress we could show)."""
    if _active is not None:
        task = _active.add_task(description, total=total, **fields)
        try:
            yield Phase(_active, task)
        finally:
            _active.remove_task(task)
        return
    with _display(Console()) as progress:
        yield Phase(progress, progress.add_task(description, total=total, **fields))
