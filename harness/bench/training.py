"""The bench's training measurements: every row's step, its saved activations, a layer-level
comparison and an optional profile, all in one process.

Rows, per precision:
- each requested method; a mixture with per-expert dropout also gets its `dropout_mode=shared` twin;
- for each total expert rank N·r found in a mixture, LoRA with rank N·r and the same dropout rate on
  the same target modules: the dense baseline with the same adapter FLOPs;
- for each mixture, its "loop reference": the same parameters run with a Python loop over experts
  as the reference implementations do (per expert a `torch.where`, i.e. a host sync, a row gather,
  its own dropout on those rows, two skinny GEMMs and an `index_add`), checked to give the same
  logits as the vectorized core.
Every row has its own modules over the one base's weights (harness/model/one_base.py, `sharing_weights`).
Steps are timed round-robin (one step of every row, then the next round), so load from other
processes on a shared machine hits every row alike. A row's ratio to its baseline is taken per
round (the two steps ran seconds apart) and reported as the median with the rounds' range: on a
shared VM single steps vary by 30%, and the range says whether a target is met, missed or unclear.
"""

import gc
import statistics
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import cast

import torch
from torch import nn

from ...base.errors import UserError
from ...methods.registry import Method, build_method
from ..model.loading import BaseModel
from ..model.one_base import sharing_weights
from ..model.precision import Precision
from ..train.loop import set_seed
from .loop import LOOP_EQUALITY_TOLERANCE, expert_modules, loop_max_abs_difference, loop_reference
from .memory import probe_memory
from .profile import profile_step, synchronize

# --- one benchmarked row ------------------------------------------------------------------------


@dataclass
class Row:
    label: str
    method: Method
    model: nn.Module
    optimizer: torch.optim.Optimizer
    precision: Precision
    loop: bool = False
    baseline: str | None = None  # the row this one's ratio is taken against (LoRA(N·r), or the mixture for a loop)
    seconds: list[float] = field(default_factory=list)
    saved_activations_mb: float = 0.0
    peak_mb: float = 0.0  # the row alone: what it holds between steps plus its probed step's rise

    def step(self, batch: dict) -> None:
        with loop_reference(self.model) if self.loop else nullcontext(), self.precision.autocast():
            loss = self.model(**batch).loss
            aux = self.method.aux_loss(self.model)
            total = loss if aux is None else loss + self.method.aux_loss_coeff * aux
        total.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


def precision_label(label: str, precision: Precision, several: bool) -> str:
    return f"{label} [{precision.name}]" if several else label


def _make_row(label: str, method: Method, base: BaseModel, device: torch.device, precision: Precision, lr: float, seed: int, **extra) -> Row:
    """A row: its own modules over the base's weights (moved to the device once), a mixed precision's own casts."""
    set_seed(seed)
    model = method.apply(precision.prepare(sharing_weights(base.model.to(device))))  # type: ignore[arg-type]  # transformers' functools.wraps on PreTrainedModel.to hides its self from mypy
    if any(p.requires_grad for p in base.model.parameters()):
        raise UserError(f"{method.name} trains base weights, which the bench's rows share; bench it alone")
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    return Row(label, method, model, torch.optim.AdamW(params, lr=lr), precision, **extra)


def _variants(name: str, options: dict) -> list[tuple[str, dict]]:
    """A mixture with per-expert dropout is also measured with `dropout_mode=shared` (same parameters otherwise)."""
    method = build_method(name, options)
    config = method.config
    if getattr(config, "dropout_mode", None) is None or not getattr(config, "dropout", 0.0):
        return [(name, options)]
    other = "shared" if config.dropout_mode == "per_expert" else "per_expert"
    return [(name, options), (f"{name} dropout_mode={other}", {**options, "dropout_mode": other})]


def build_rows(settings, base: BaseModel, device: torch.device, precision: Precision, several: bool = False) -> list[Row]:
    """Every row of one precision: the methods, their shared-dropout twins, LoRA(N·r) and loop references."""
    lr, seed = settings.lr, settings.seed
    mine: list[Row] = []
    for name in settings.methods:
        if not build_method(name, settings.method_options.get(name)).trains:
            continue
        for label, options in _variants(name, settings.method_options.get(name) or {}):
            method = build_method(name, options)
            mine.append(_make_row(precision_label(label, precision, several), method, base, device, precision, lr, seed))
    extra: list[Row] = []
    for row in [r for r in mine if expert_modules(r.model)]:
        # The same work as the mixture's experts: same modules, same total rank, same dropout rate.
        total_rank = expert_modules(row.model)[0].lora_A.shape[0]
        dropout = getattr(row.method.config, "dropout", 0.0)
        label = precision_label(f"lora r={total_rank}" + (f" p={dropout:g}" if dropout else ""), precision, several)
        if label not in [r.label for r in mine + extra]:
            options = {"rank": total_rank, "dropout": dropout}
            targets = getattr(row.method.config, "target_modules", None)
            if targets:
                options["target_modules"] = list(targets)
            extra.append(_make_row(label, build_method("lora", options), base, device, precision, lr, seed))
        row.baseline = label
        if getattr(row.method.config, "dropout_mode", "per_expert") == "per_expert":
            # The loop reference shares the mixture row's model and optimizer: same parameters.
            extra.append(Row(f"{row.label} loop-ref", row.method, row.model, row.optimizer, precision, loop=True, baseline=row.label))
    return mine + extra


def random_batch(base: BaseModel, settings, device: torch.device) -> dict:
    generator = torch.Generator().manual_seed(settings.seed)
    ids = torch.randint(3, base.model.config.vocab_size, (settings.batch_size, settings.seq_len), generator=generator)
    return {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device), "labels": ids.to(device)}


def measure_training(settings, base: BaseModel, device: torch.device, precisions: list[Precision]) -> list[dict]:
    """One precision at a time: a mixed-precision row holds its own cast weights, and when every row also
    held its own model copy, all rows of two precisions at SmolLM2 8 × 128 outgrew 24 GiB. Within a
    precision the rows are timed round-robin."""
    results = []
    batch = random_batch(base, settings, device)
    for precision in precisions:
        rows = build_rows(settings, base, device, precision, several=len(precisions) > 1)
        results += _measure_rows(rows, batch, settings, device) + measure_layers(rows, settings, device)
        del rows
        gc.collect()
    return results


def _measure_rows(rows: list[Row], batch: dict, settings, device: torch.device) -> list[dict]:
    for row in rows:  # warmup; then one step with the memory probes on (bench_memory.py)
        for _ in range(settings.warmup):
            row.step(batch)
        row.saved_activations_mb, row.peak_mb = probe_memory(row, batch, device)
    _time_rounds(rows, batch, settings.steps, device)
    tokens = settings.batch_size * settings.seq_len
    by_label = {row.label: row for row in rows}
    results = []
    for row in rows:
        median = statistics.median(row.seconds)
        result = {
            "label": row.label,
            "method": row.method.name,
            "precision": row.precision.name,
            "dropout_mode": getattr(row.method.config, "dropout_mode", None),
            "loop_reference": row.loop,
            "step_ms_median": 1000 * median,
            "step_ms_all": [1000 * s for s in row.seconds],
            "tokens_per_second": tokens / median,
            "saved_activations_mb": row.saved_activations_mb,
            "peak_mb": row.peak_mb,
            "trainable_parameters": sum(p.numel() for p in row.model.parameters() if p.requires_grad),
            "baseline": row.baseline,
            **(paired_ratios(row.seconds, by_label[row.baseline].seconds) if row.baseline else {"ratio_to_baseline": None}),
            "saved_ratio_to_baseline": row.saved_activations_mb / by_label[row.baseline].saved_activations_mb if row.baseline else None,
            "peak_ratio_to_baseline": row.peak_mb / by_label[row.baseline].peak_mb if row.baseline else None,
        }
        if settings.profile:
            result["profile"] = profile_step(row, batch, device)
            result["profile"]["gflop_per_second"] = result["profile"]["matmul_gflop"] / median  # profiling slows the step
        if row.loop:
            result["max_abs_logit_difference"] = loop_max_abs_difference(row.model, row.precision, batch)
            result["outputs_match"] = result["max_abs_logit_difference"] <= LOOP_EQUALITY_TOLERANCE
        results.append(result)
    return results


def _time_rounds(rows: list[Row], batch: dict, rounds: int, device: torch.device) -> None:
    for _ in range(rounds):  # round-robin: every row sees the same machine conditions
        for row in rows:
            synchronize(device)
            started = time.perf_counter()
            row.step(batch)
            synchronize(device)
            row.seconds.append(time.perf_counter() - started)


def measure_precision_pairs(settings, base: BaseModel, device: torch.device, precisions: list[Precision]) -> list[dict]:
    """Each requested method in fp32 and in each mixed precision, timed in the same rounds.

    The per-precision phases above run minutes apart, and a shared machine drifts in between: one
    bench run divided its phases into "bf16 0.9× fp32" where an interleaved rerun of the same rows
    gave 1.5-2.0×. Two model copies at a time fit where all rows of two precisions did not."""
    reference = next((p for p in precisions if not p.mixed), None)
    mixed = [p for p in precisions if p.mixed]
    if reference is None or not mixed:
        return []
    batch = random_batch(base, settings, device)
    pairs = []
    for name in settings.methods:
        options = settings.method_options.get(name) or {}
        if not build_method(name, options).trains:
            continue
        rows = [
            _make_row(f"{name} [{p.name}]", build_method(name, options), base, device, p, settings.lr, settings.seed) for p in [reference, *mixed]
        ]
        for row in rows:
            for _ in range(settings.warmup):
                row.step(batch)
        _time_rounds(rows, batch, settings.steps, device)
        for row in rows[1:]:
            speedup = paired_ratios(rows[0].seconds, row.seconds)  # fp32 time / mixed time, round by round
            pairs.append({
                "method": name, "precision": row.precision.name, "against": reference.name,
                "step_ms_all": {r.precision.name: [1000 * s for s in r.seconds] for r in (rows[0], row)},
                "speedup": speedup["ratio_to_baseline"], "speedup_range": speedup["ratio_range"],
            })  # fmt: skip
        del rows
        gc.collect()
    return pairs


def paired_ratios(seconds: list[float], baseline_seconds: list[float]) -> dict:
    """Round-by-round ratios of a row to its baseline: their median and range."""
    ratios = [mine / theirs for mine, theirs in zip(seconds, baseline_seconds, strict=True)]
    return {"ratio_to_baseline": statistics.median(ratios), "ratio_range": [min(ratios), max(ratios)]}


# --- one adapted layer alone --------------------------------------------------------------------


def first_adapted_layer(model: nn.Module) -> nn.Module:
    """The first module with trainable parameters whose name ends in q_proj (or the first adapted one)."""
    candidates = [
        (name, m) for name, m in model.named_modules() if any(p.requires_grad for p in m.parameters(recurse=True)) and name.endswith("proj")
    ]
    named_q = [m for name, m in candidates if name.endswith("q_proj")]
    return (named_q or [m for _, m in candidates])[0]


def measure_layers(rows: list[Row], settings, device: torch.device) -> list[dict]:
    """Forward + backward of one adapted linear (its frozen base included) on the step's token count.

    This isolates the adapter from the frozen model around it, whose cost is the same for every
    row and dilutes every ratio at the step level; the loop-reference target is read here. Methods
    whose layers only run inside their decoder block (MoA reads gates the block computes) are skipped.
    """
    tokens = settings.batch_size * settings.seq_len
    generator = torch.Generator().manual_seed(settings.seed)
    layers = {row.label: first_adapted_layer(row.model) for row in rows}
    inputs = {label: torch.randn(tokens, _in_features(layer), generator=generator).to(device) for label, layer in layers.items()}

    def run(row: Row) -> None:
        x = inputs[row.label].requires_grad_(True)
        with loop_reference(row.model) if row.loop else nullcontext(), row.precision.autocast():
            out = layers[row.label](x)
        out.float().square().mean().backward()
        x.grad = None
        row.optimizer.zero_grad(set_to_none=True)

    standalone = []
    for row in rows:
        try:
            run(row)
        except RuntimeError:  # e.g. a MoA expert outside its block
            continue
        standalone.append(row)
    standalone = [row for row in standalone if not row.baseline or row.baseline in {r.label for r in standalone}]
    times: dict[str, list[float]] = {row.label: [] for row in standalone}
    for _ in range(max(5, settings.steps)):
        for row in standalone:
            synchronize(device)
            started = time.perf_counter()
            run(row)
            synchronize(device)
            times[row.label].append(time.perf_counter() - started)
    return [
        {
            "label": f"{row.label} (one layer)",
            "layer": True,
            "method": row.method.name,
            "precision": row.precision.name,
            "dropout_mode": getattr(row.method.config, "dropout_mode", None),
            "loop_reference": row.loop,
            "step_ms_median": 1000 * statistics.median(times[row.label]),
            "baseline": f"{row.baseline} (one layer)" if row.baseline else None,
            **(paired_ratios(times[row.label], times[row.baseline]) if row.baseline else {"ratio_to_baseline": None}),
        }
        for row in standalone
    ]


def _in_features(layer: nn.Module) -> int:
    base = cast(nn.Linear, getattr(layer, "base_layer", layer))  # adapters wrap linears
    return base.in_features
