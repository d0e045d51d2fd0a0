"""One planned trial: what it runs (method, task, seed, settings), its name, and its identity."""

import hashlib
from dataclasses import dataclass, field

from ..settings.config import ExperimentConfig
from ..settings.grid import value_text


@dataclass(frozen=True)
class Trial:
    method: str
    task: str  # the task evaluated (one MLflow run per trial)
    seed: int
    resolved: dict = field(compare=False, repr=False)
    config_hash: str = ""
    train_tasks: tuple[str, ...] = ()  # what the adapter is trained on: (task,), or every task with --mix
    grid: tuple[tuple[str, object], ...] = field(default=(), compare=False)  # the swept values that apply to it
    settings: ExperimentConfig | None = field(default=None, compare=False, repr=False)  # its grid point's config
    implementation: dict[str, str] = field(default_factory=dict, compare=False, repr=False)  # harness/store/fingerprint.py

    @property
    def identity(self) -> str:
        """What decides reuse: the settings (config_hash) and the code and packages that compute the number."""
        return hashlib.sha256(f"{self.config_hash}/{self.implementation.get('implementation')}".encode()).hexdigest()[:12]

    @property
    def name(self) -> str:
        details = [f"{key}={value_text(value)}" for key, value in self.grid]
        details = [", ".join(details)] if details else []
        if self.train_tasks != (self.task,):
            details.append(f"mix: {'+'.join(self.train_tasks)}")
        return f"{self.method}/{self.task}/seed{self.seed}" + (f" ({'; '.join(details)})" if details else "")

    @property
    def adapter_key(self) -> tuple:
        """Trials with equal keys share one trained adapter (a --mix group); eval settings do not change it."""
        trained_with = tuple((k, value_text(v)) for k, v in self.grid if not k.startswith("eval."))
        return (self.method, self.train_tasks, self.seed, trained_with)
