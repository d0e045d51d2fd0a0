"""`adamole-bench plan`: each trial's training memory, estimated on the meta device (no weights loaded).

The model is built from its config.json alone on the meta device, its precision applied and each
method's adapter attached there. Weights, adapter, gradients and AdamW state are counted from the
parameters' sizes and dtypes. Activations are not guessed from formulas: one training forward runs on
fake tensors (shapes, no memory) at the config's batch and length, and every tensor autograd saves for
backward is counted (views once, the parameters themselves not), plainly and under
`train.gradient_checkpointing`; only dropout masks are added by formula (`dropout_bytes`).
"""

import copy
import os
import re
from dataclasses import dataclass

import psutil
import torch
from rich.table import Table
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode
from transformers import AutoConfig, AutoModelForCausalLM
from transformers.modeling_layers import GradientCheckpointingLayer

from ...base.errors import UserError
from ...methods.registry import build_method, make_config
from ..model.loading import EMBEDDED_MODELS, byte_level_tokenizer, smollm2_checkpoint, tiny_llama
from ..model.precision import Precision
from ..settings.config import ExperimentConfig, TrainConfig
from ..train.checkpointing import gradient_checkpointing

ANSWER_TOKENS = 2  # the letter protocol's answer: the letter and EOS
ADAMW_STATES = 2  # exp_avg and exp_avg_sq, each the parameter's size and dtype
UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


@dataclass
class TrialMemory:
    method: str
    weights: int  # bytes of the frozen base in its stored dtypes
    adapter: int  # trainable parameters
    gradients: int
    optimizer: int
    activations: int  # saved for backward at the config's batch and length
    activations_checkpointed: int

    def total(self, checkpointed: bool) -> int:
        return self.weights + self.adapter + self.gradients + self.optimizer + (self.activations_checkpointed if checkpointed else self.activations)


def parse_memory(text: str) -> int:
    """'24GiB', '80 GB', '512MiB' or plain bytes → bytes."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kmgt]i?b?|b)?\s*", text.lower())
    unit = (match.group(2) or "") if match else None
    if unit is not None and unit[-1:] != "b" and unit:
        unit += "b"  # 24G, 24Gi → 24GB, 24GiB
    if match is None or unit not in UNITS:
        raise UserError(f"--device-memory {text!r} is not a size; give e.g. 24GiB, 80GB or 512MiB")
    return int(float(match.group(1)) * UNITS[unit])


def device_memory() -> tuple[int, str]:
    """What the trial would run in: the visible GPU's memory, else this machine's RAM."""
    if torch.cuda.is_available():
        return torch.cuda.get_device_properties(0).total_memory, torch.cuda.get_device_name(0)
    return psutil.virtual_memory().total, "this machine's RAM"


def skeleton(name: str) -> nn.Module:
    """The causal LM `name` on the meta device: its architecture and sizes, no weights read or allocated."""
    if name == "tiny-llama":
        with torch.device("meta"):
            return tiny_llama(len(byte_level_tokenizer()))
    source = smollm2_checkpoint() if name == "smollm2-135m" else name
    try:
        config = AutoConfig.from_pretrained(source, local_files_only=os.environ.get("HF_HUB_OFFLINE") == "1")  # offline: the cache, never a request
    except (OSError, ValueError) as err:
        raise UserError(
            f"plan needs the config.json of model '{name}': pass a local folder that has it, or cache it once with ADAMOLE_BENCH_ONLINE=1 "
            f"(embedded: {', '.join(EMBEDDED_MODELS)})"
        ) from err
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


def _bytes(params) -> int:
    return sum(p.numel() * p.element_size() for p in params)


def _fake(model: nn.Module) -> tuple[nn.Module, FakeTensorMode]:
    """The meta model with fake CPU tensors in place of its parameters and buffers: transformers' forward
    reads values (masks, packed sequences) that meta tensors refuse, and skips those reads for fake ones."""
    mode = FakeTensorMode(allow_non_fake_inputs=True)

    def fake(tensor: torch.Tensor) -> torch.Tensor:
        with mode:
            return torch.empty(tensor.shape, dtype=tensor.dtype, device="cpu")

    for module in model.modules():
        for key, param in module._parameters.items():
            if param is not None:
                module._parameters[key] = nn.Parameter(fake(param), requires_grad=param.requires_grad)
        for key, buffer in module._buffers.items():
            if buffer is not None:
                module._buffers[key] = fake(buffer)
    return model, mode


def saved_activations(fake: tuple[nn.Module, FakeTensorMode], method, train: TrainConfig, precision: Precision, checkpointed: bool) -> int:
    """Bytes autograd keeps for backward at the step's peak, from one training forward at the config's batch
    and length on fake tensors (nothing is allocated or computed). Plainly that is everything the forward
    saved. Checkpointed it is what stays outside the layers (each layer's input, the head and loss), then in
    backward the head's and loss's tensors are freed before the last layer is replayed, so the peak holds
    the larger of the two, not both: `kept - head + max(head, one layer's replay)`."""
    saved = _saved_by_part(fake, method, train, precision, checkpointed)
    if not checkpointed:
        return sum(saved.values())
    replay = _saved_by_part(fake, method, train, precision, False)["last layer"]  # what replaying it saves again
    return saved["before"] + saved["last layer"] + max(saved["after"], replay)


def _saved_by_part(fake: tuple[nn.Module, FakeTensorMode], method, train: TrainConfig, precision: Precision, checkpointed: bool) -> dict[str, int]:
    """The forward's saved bytes (views once, parameters not) by where they were saved: before the last
    decoder layer, in it (checkpointed: its input only), and after it (final norm, head, loss, aux loss)."""
    model, mode = fake
    params = {id(p) for p in model.parameters()}
    seen: dict[int, int] = {}
    parts = {"before": 0, "last layer": 0, "after": 0}
    where = ["before"]

    def pack(tensor: torch.Tensor):
        base = tensor if tensor._base is None else tensor._base
        if id(base) not in params and id(base) not in seen:
            seen[id(base)] = size = base.numel() * base.element_size()
            parts[where[0]] += size
        return tensor

    last = [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)][-1:]
    hooks = [
        hook
        for layer in last
        for hook in (
            layer.register_forward_pre_hook(lambda *_: where.__setitem__(0, "last layer")),
            layer.register_forward_hook(lambda *_: where.__setitem__(0, "after")),
        )
    ]
    keep = head_positions(train)
    model.train()
    try:
        with mode, torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            ids = torch.zeros(train.batch_size, train.max_length, dtype=torch.long)
            with gradient_checkpointing(model, checkpointed), precision.autocast():
                logits = model(input_ids=ids, attention_mask=torch.ones_like(ids), logits_to_keep=keep, use_cache=False).logits
                nn.functional.cross_entropy(logits.float().flatten(0, 1), ids[:, :keep].flatten())
                method.aux_loss(model)
    finally:
        for hook in hooks:
            hook.remove()
    return parts


def head_positions(train: TrainConfig) -> int:
    """Positions the LM head runs at (train/loop.py: supervised_loss): all with loss_on=full; with answer-only
    loss the union over the batch's rows of the answer positions, taken as ANSWER_TOKENS per row."""
    return train.max_length if train.loss_on == "full" else min(train.max_length, train.batch_size * ANSWER_TOKENS)


def _layers(model: nn.Module) -> int:
    return max(1, sum(isinstance(m, GradientCheckpointingLayer) for m in model.modules()))


def plan(config: ExperimentConfig) -> list[TrialMemory]:
    """One estimate per method of the config (tasks and seeds share it: same batch, length and model)."""
    precision = config.resolved_precision()
    base = precision.prepare(skeleton(config.model))
    estimates = []
    for name in config.methods:
        options = config.method_options.get(name)
        with torch.device("meta"):
            model = build_method(name, options).apply(copy.deepcopy(base))
        trainable = [p for p in model.parameters() if p.requires_grad]
        frozen = [p for p in model.parameters() if not p.requires_grad]
        # Dropout masks are drawn per value, which fake tensors cannot size (the mixtures' sparse dropout):
        # the forward runs without them, and dropout_bytes adds what they keep.
        undropped = build_method(name, {**(options or {}), "dropout": 0.0} if _has_dropout(name, options) else options)
        with torch.device("meta"):
            fake = _fake(undropped.apply(copy.deepcopy(base)))
        extra = dropout_bytes(model, config.train)  # checkpointed: only the replayed layer's masks
        activations = [
            saved_activations(fake, undropped, config.train, precision, checkpointed) + (extra // _layers(model) if checkpointed else extra)
            if trainable
            else 0
            for checkpointed in (False, True)
        ]
        estimates.append(
            TrialMemory(
                method=name,
                weights=_bytes(frozen),
                adapter=_bytes(trainable),
                gradients=_bytes(trainable),
                optimizer=ADAMW_STATES * _bytes(trainable),
                activations=activations[0],
                activations_checkpointed=activations[1],
            )
        )
    return estimates


def _size(nbytes: int) -> str:
    """Binary units, short enough for an 80-column table: 4.58M is 4.58 MiB."""
    for unit, scale in (("G", 2**30), ("M", 2**20), ("K", 2**10)):
        if nbytes >= scale:
            return f"{nbytes / scale:.3g}{unit}"
    return f"{nbytes}B"


def render(config: ExperimentConfig, estimates: list[TrialMemory], capacity: int, where: str):
    """One row per trial of the plan, with and without gradient checkpointing, and whether each fits."""
    from rich import box  # only the command prints

    train = config.train
    title = (
        f"{config.model} · {config.resolved_precision().name} · batch {train.batch_size} × {train.max_length} tokens"
        f" · head at {head_positions(train)} positions · fits in {_size(capacity)} ({where})? (plain/checkpointed) G/M/K = GiB/MiB/KiB; base: frozen weights, adapt: trainable, grads, AdamW state, activ: kept for backward"
    )
    table = Table(title=title, box=box.SIMPLE_HEAD, padding=(0, 0), pad_edge=False)
    for column in ("method", "base", "adapt", "grads", "AdamW", "activ", "total", "ckpt\nactiv", "ckpt\ntotal", "fits"):
        table.add_column(column, justify="left" if column in ("method", "fits") else "right", no_wrap=True)
    for e in estimates:
        fits = "/".join("yes" if e.total(c) <= capacity else "[red]no[/]" for c in (False, True))
        sizes = (e.weights, e.adapter, e.gradients, e.optimizer, e.activations, e.total(False), e.activations_checkpointed, e.total(True))
        table.add_row(e.method, *map(_size, sizes), fits)
    return table


def _has_dropout(name: str, options: dict | None) -> bool:
    config = make_config(name, options)
    return getattr(config, "dropout", 0.0) > 0


def dropout_bytes(model: nn.Module, train: TrainConfig) -> int:
    """PEFT LoRA's nn.Dropout keeps its mask (1 byte a value) and its output (fp32) per adapted linear.
    The mixtures' sparse expert dropout keeps only the ~p share of dropped entries: not counted."""
    tokens = train.batch_size * train.max_length
    dropouts: list[tuple[int, float]] = [
        (module.in_features, dropout.p)  # type: ignore[misc]  # torch types Module.__getattr__ as Tensor | Module; PEFT's in_features is an int
        for module in model.modules()
        if isinstance(layer_dropouts := getattr(module, "lora_dropout", None), nn.ModuleDict)
        for dropout in layer_dropouts.values()
        if isinstance(dropout, nn.Dropout)
    ]
    return sum(tokens * features * (torch.float32.itemsize + 1) for features, p in dropouts if p > 0)
