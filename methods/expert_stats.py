"""Expert statistics of a mixture-of-LoRA-experts model, exact over an evaluation pass.

Used as `with method.statistics(model) as stats: evaluate(...)`. Every adapter reports its routing
to an observer that accumulates on-device tensor sums (no per-token Python, no host sync).
Pad tokens are left out: a forward pre-hook on the top-level model captures `attention_mask`;
when a call has none (lm-eval's HFLM often calls `model(input_ids)`), every token counts.

Definitions, per adapted module (e.g. layer 3's q_proj), over the counted tokens:
- fraction[i]: share of tokens that selected expert i (Σ_i fraction = mean_active);
- mean_active: mean number of selected experts per token;
- entropy: mean per-token entropy (nats) of the routing weights w (0 when one expert has all);
- dead: experts selected by no token;
- threshold (AdaMoLE): mean and quantiles of τ, the quantiles from a histogram with
  THRESHOLD_BINS bins over [0, max_threshold].
"""

import re
from collections.abc import Callable, Sequence
from typing import Protocol

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from .method import StatisticsRecorder
from .routing import Routing

THRESHOLD_BINS = 1024
QUANTILES = (0.1, 0.5, 0.9)


class _Observed(Protocol):
    """What this module needs of a MoeLoraAdapter: the slot its routing is reported to."""

    observer: Callable[..., None] | None


class _Accumulator:
    """Running sums of one adapter's routing, kept on its device."""

    def __init__(self, num_experts: int, device: torch.device, threshold_cap: float | None):
        zeros = lambda *shape: torch.zeros(*shape, dtype=torch.float64, device=device)  # noqa: E731
        self.tokens = zeros(())
        self.selections = zeros(num_experts)
        self.entropy = zeros(())
        self.threshold_cap = threshold_cap
        self.threshold_sum = zeros(())
        self.threshold_histogram = zeros(THRESHOLD_BINS) if threshold_cap is not None else None

    def add(self, decision: Routing, counted: torch.Tensor) -> None:
        counted = counted.to(torch.float64)
        self.tokens += counted.sum()
        self.selections += counted @ decision.selected.detach().to(torch.float64)
        self.entropy += counted @ torch.special.entr(decision.weights.detach().to(torch.float64)).sum(-1)
        if decision.threshold is not None and self.threshold_histogram is not None:
            assert self.threshold_cap is not None  # the histogram exists only with a cap
            tau = decision.threshold.detach().reshape(-1).to(torch.float64)
            self.threshold_sum += counted @ tau
            bins = (tau / self.threshold_cap * THRESHOLD_BINS).long().clamp_(0, THRESHOLD_BINS - 1)
            self.threshold_histogram.index_add_(0, bins, counted)


def _layer_of(name: str) -> str:
    """`model.layers.3.self_attn.q_proj.adapter` → `3` (the first numeric path component)."""
    match = re.search(r"\.(\d+)\.", f".{name}.")
    return match.group(1) if match else name


def _quantile(histogram: torch.Tensor, q: float, cap: float) -> float:
    cdf = histogram.cumsum(0) / histogram.sum()
    index = int(torch.searchsorted(cdf, torch.tensor(q, dtype=cdf.dtype)))
    return (min(index, THRESHOLD_BINS - 1) + 0.5) * cap / THRESHOLD_BINS


class ExpertStatistics(StatisticsRecorder):
    def __init__(self, model: nn.Module, adapters: Sequence[tuple[str, _Observed]]):
        """`adapters`: (adapted linear's name, its MoeLoraAdapter) of `model` (moe_lora.moe_adapters), handed in so that this
        module, which moe_lora.py imports, need not import it back."""
        self.model = model
        self.adapters = adapters
        self._names = {id(adapter): name for name, adapter in self.adapters}
        self._sums: dict[str, _Accumulator] = {}
        self._attention_mask: torch.Tensor | None = None
        self._hook: RemovableHandle | None = None

    # -- collection ---------------------------------------------------------------------------

    def __enter__(self):
        self._hook = self.model.register_forward_pre_hook(self._capture_mask, with_kwargs=True)
        for _, adapter in self.adapters:
            adapter.observer = self._observe
        return self

    def __exit__(self, *exc) -> None:
        if self._hook is not None:
            self._hook.remove()
        for _, adapter in self.adapters:
            adapter.observer = None
        self._attention_mask = None

    def _capture_mask(self, module, args, kwargs):
        mask = kwargs.get("attention_mask")
        self._attention_mask = mask if isinstance(mask, torch.Tensor) and mask.dim() == 2 else None

    def _counted_tokens(self, leading_shape: torch.Size, device: torch.device) -> torch.Tensor:
        """1 for real tokens, 0 for pads, flattened like the adapter's (T, in) input."""
        mask = self._attention_mask
        if mask is not None and len(leading_shape) == 2 and mask.shape[0] == leading_shape[0] and mask.shape[1] >= leading_shape[1]:
            return mask[:, mask.shape[1] - leading_shape[1] :].reshape(-1).to(device)  # the last L positions (KV cache)
        return torch.ones(leading_shape.numel(), device=device)

    def _observe(self, adapter: nn.Module, decision: Routing, leading_shape: torch.Size) -> None:
        name = self._names[id(adapter)]
        if name not in self._sums:
            cap = getattr(adapter.router, "max_threshold", None)
            self._sums[name] = _Accumulator(decision.weights.shape[-1], decision.weights.device, cap)
        self._sums[name].add(decision, self._counted_tokens(leading_shape, decision.weights.device))

    # -- results ------------------------------------------------------------------------------

    def table(self) -> list[dict]:
        """One row per adapted module: the full per-expert picture."""
        rows = []
        for name, acc in self._sums.items():
            tokens = float(acc.tokens)
            if tokens == 0:
                continue
            fraction = (acc.selections / tokens).cpu()
            row = {
                "module": name,
                "layer": _layer_of(name),
                "tokens": tokens,
                "fraction": fraction.tolist(),
                "mean_active": float(fraction.sum()),
                "entropy": float(acc.entropy) / tokens,
                "dead": int((acc.selections == 0).sum()),
            }
            if acc.threshold_histogram is not None and acc.threshold_cap is not None:  # both or neither
                histogram = acc.threshold_histogram.cpu()
                row["threshold_mean"] = float(acc.threshold_sum) / tokens
                row |= {f"threshold_p{round(q * 100)}": _quantile(histogram, q, acc.threshold_cap) for q in QUANTILES}
            rows.append(row)
        return rows

    def metrics(self) -> dict[str, float]:
        """Model-wide summaries plus per-layer means (4 or 5 keys per layer)."""
        rows = self.table()
        if not rows:
            return {}
        summary_keys = ["mean_active", "entropy", "threshold_mean"] + [f"threshold_p{round(q * 100)}" for q in QUANTILES]
        metrics = {f"experts/{key}": _mean(rows, key) for key in summary_keys if key in rows[0]}
        dead = sum(row["dead"] for row in rows)
        metrics["experts/dead"] = float(dead)
        metrics["experts/dead_fraction"] = dead / sum(len(row["fraction"]) for row in rows)
        metrics["experts/tokens"] = rows[0]["tokens"]
        for layer in dict.fromkeys(row["layer"] for row in rows):
            in_layer = [row for row in rows if row["layer"] == layer]
            for key in ("mean_active", "entropy", "threshold_mean"):
                if key in in_layer[0]:
                    metrics[f"experts/layer{layer}/{key}"] = _mean(in_layer, key)
            metrics[f"experts/layer{layer}/dead"] = float(sum(row["dead"] for row in in_layer))
        return metrics

    def figures(self) -> dict:
        rows = self.table()
        if not rows:
            return {}
        return {"experts/usage_heatmap.png": usage_heatmap(rows)}

    def tables(self) -> dict:
        rows = self.table()
        return {"experts/usage_table.json": rows} if rows else {}


def _mean(rows: list[dict], key: str) -> float:
    return sum(row[key] for row in rows) / len(rows)


def usage_heatmap(rows: list[dict]):
    """Adapted module (rows, in layer order) × expert: share of tokens routed to the expert."""
    from matplotlib.figure import Figure  # object API: no pyplot, no global backend switch

    fractions = [row["fraction"] for row in rows]
    figure = Figure(figsize=(2.4 + 0.55 * len(fractions[0]), 1.4 + 0.24 * len(rows)), layout="constrained")
    axes = figure.subplots()
    image = axes.imshow(fractions, aspect="auto", cmap="viridis", vmin=0.0, vmax=1.0, interpolation="nearest")
    axes.set_xticks(range(len(fractions[0])))
    axes.set_yticks(range(len(rows)), [module_label(row["module"]) for row in rows], fontsize=8)
    axes.set_xlabel("expert")
    axes.set_title("share of tokens routed to each expert", fontsize="medium")
    annotate_cells(axes, fractions)
    figure.colorbar(image, ax=axes, label="token fraction")
    return figure


def module_label(name: str) -> str:
    """`base_model.model.model.layers.3.self_attn.q_proj` → `L3 q_proj`: short enough to read at a glance."""
    layer = _layer_of(name)
    return f"L{layer} {name.rsplit('.', 1)[-1]}" if layer.isdigit() else name.removeprefix("base_model.").removeprefix("model.")


MAX_ANNOTATED_CELLS = 160  # beyond this (e.g. 30 layers × 4 modules × 8 experts) values would not fit their cells


def annotate_cells(axes, values) -> None:
    """Each cell's value (2 decimals) on a heatmap of values in [0, 1], dark text on light cells."""
    if sum(len(row) for row in values) > MAX_ANNOTATED_CELLS:
        return
    for y, row in enumerate(values):
        for x, value in enumerate(row):
            axes.text(x, y, f"{value:.2f}", ha="center", va="center", fontsize=7, color="black" if value > 0.6 else "white")
