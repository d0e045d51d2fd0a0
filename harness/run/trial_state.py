"""What the trials of one process share: the base model (loaded once; each trial's adapter goes on and
comes off it, harness/model/one_base.py), each task's data, and the last trained adapter (reused by the next
trials of a --mix group)."""

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ...base.errors import Diverged, UserError
from ...methods.registry import Method, build_method
from ...tasks.sources import TaskData, load_task
from ..model.loading import BaseModel, load_base_model, resolve_device
from ..model.one_base import Attachment
from ..settings.config import ExperimentConfig
from ..train import distributed
from ..train.data import EncodedExamples
from ..train.loop import TrainResult, set_seed, train
from ..train.rank_checkpoints import trial_checkpoint
from .trial import Trial


@dataclass
class TrainedAdapter:
    """A trained adapter (on the shared base while a trial uses it) and what it was trained on."""

    method: Method
    attachment: Attachment
    result: TrainResult
    trainable: int
    total: int
    train_data: list[TaskData]

    @property
    def model(self):
        return self.attachment.model


class TrialState:
    def __init__(self, config: ExperimentConfig):
        self.config = config
        self.precision = config.resolved_precision()
        self._base: BaseModel | None = None
        self._data: dict[str, TaskData] = {}
        self._trained: tuple[tuple, TrainedAdapter | Diverged] | None = None

    def base(self) -> BaseModel:
        if self._base is None:
            cfg = self.config
            self._base = load_base_model(cfg.model, device="cpu", trust_remote_code=cfg.trust_remote_code)
            self.precision.prepare(self._base.model)  # once: trials adapt this very model and leave it as it is now
        return self._base

    def data(self, task: str) -> TaskData:
        if task not in self._data:
            self._data[task] = load_task(task, self.config.data_dir)
        return self._data[task]

    def read_local_data(self) -> None:
        """Read the tasks --data-dir provides now, so a broken file fails in one line before any run."""
        if self.config.data_dir:
            for task in self.config.tasks:
                if (Path(self.config.data_dir) / task).is_dir():
                    self.data(task)

    def step_hook(self, trial: Trial, method: Method, model) -> Callable[[int, dict], None] | None:
        """Called after every optimizer step of `trial`'s training; none here (a search scores its trials on the way, harness/tune/)."""
        return None

    def forget_adapter(self, keep: "Trial | None" = None) -> None:
        """Free the last trained adapter unless `keep` reuses it (its --mix group): before a trial, so its
        memory is not counted in the next one's; a Ray worker keeps the state for its next task, not the adapter."""
        if keep is None or self._trained is None or self._trained[0] != keep.adapter_key:
            self._trained = None

    @contextmanager
    def adapter(self, trial: Trial) -> Iterator[TrainedAdapter]:
        """This trial's adapter on the base, trained now or put back on (its --mix group's); off again after.
        A --mix group whose training diverged fails each of its trials at once."""
        key = trial.adapter_key
        if self._trained is None or self._trained[0] != key:
            self._trained = None  # free the previous adapter before training the next
            assert trial.settings is not None  # planned trials carry their settings (sweep.plan)
            try:
                self._trained = (key, _train_adapter(trial, trial.settings, self))
            except Diverged as err:
                self._trained = (key, err)
        trained = self._trained[1]
        if isinstance(trained, Diverged):
            raise trained
        trained.attachment.attach()
        try:
            yield trained
        finally:
            trained.attachment.detach()


def _train_adapter(trial: Trial, config: ExperimentConfig, state: TrialState) -> TrainedAdapter:
    base = state.base()
    method = build_method(trial.method, config.method_options.get(trial.method))
    set_seed(trial.seed)  # adapter initialisation depends on the seed
    device = distributed.context().device(resolve_device(config.device))  # cuda:<local rank> under DDP
    attachment = Attachment(base.model.to(device), method.apply)  # type: ignore[arg-type]  # transformers' functools.wraps on PreTrainedModel.to hides its self from mypy; the base moves to the device once
    try:
        model = attachment.model
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        total = sum(p.numel() for p in model.parameters())
        train_data = [state.data(task) for task in trial.train_tasks]
        sources = [(data.spec, data.splits["train"][: config.train.max_train_examples]) for data in train_data]
        for data, (_, docs) in zip(train_data, sources):
            if method.trains and not docs:
                raise UserError(f"task '{data.spec.name}' has no train split in {data.source}; provide one with --data-dir")
        examples = EncodedExamples(
            sources, base.tokenizer, config.train.max_length, config.train.loss_on, config.eval.protocol,
            truncation_side=config.train.truncation_side, supervise_eos=config.train.supervise_eos,
        )  # fmt: skip
        wanted = config.train.checkpoint_every and method.trains
        checkpoint = trial_checkpoint(trial.identity, trial.seed, config.train, distributed.context()) if wanted else None
        pad_id, on_step = base.tokenizer.pad_token_id, state.step_hook(trial, method, model)
        result = train(
            model, method, examples if method.trains else [], config.train, trial.seed, pad_id, state.precision, on_step, checkpoint=checkpoint,
        )  # fmt: skip
    except BaseException:
        attachment.detach()
        raise
    return TrainedAdapter(method, attachment, result, trainable, total, train_data)
