"""Expert statistics over an evaluation: exact token counts, padding excluded (spec §3 notebook stats)."""

# Imported where used: matplotlib (only the report's figures need it)
import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from ..expert_stats import annotate_cells
from ..method import StatisticsRecorder


class MoaStatistics(StatisticsRecorder):
    """Accumulates per layer × expert sums on the device (no host sync per forward).

    The padding mask comes from the top-level forward's `attention_mask`; a forward without
    one (lm-eval's loglikelihood calls) counts every token.
    """

    def __init__(self, model: nn.Module, blocks: list, variant: str):
        self.model, self.blocks, self.variant = model, blocks, variant
        self.expert_names = blocks[0].expert_names if blocks else []
        self.token_mask: torch.Tensor | None = None
        self.sums: dict[str, torch.Tensor] = {}
        self._hook: RemovableHandle | None = None

    def __enter__(self) -> "MoaStatistics":
        self._hook = self.model.register_forward_pre_hook(self._capture_mask, with_kwargs=True)
        for block in self.blocks:
            block.recorder = self
        return self

    def __exit__(self, *exc) -> None:
        if self._hook is not None:
            self._hook.remove()
        for block in self.blocks:
            block.recorder = None

    def _capture_mask(self, model, args, kwargs) -> None:
        mask = kwargs.get("attention_mask", args[1] if len(args) > 1 else None)
        self.token_mask = mask if isinstance(mask, torch.Tensor) and mask.dim() == 2 else None

    def observe(self, layer: int, router_weights: torch.Tensor, mixing: torch.Tensor, threshold: torch.Tensor | None) -> None:
        """router_weights, mixing: (B, T, E); threshold: (B, T, 1) or None."""
        tokens = router_weights.shape[-2]
        mask = torch.ones(router_weights.shape[:-1], device=router_weights.device)
        if self.token_mask is not None:
            mask = self.token_mask[:, -tokens:].to(mask)  # with a KV cache the mask also covers past tokens
        mask = mask.unsqueeze(-1)
        if not self.sums:
            self._allocate(router_weights.device)
        self.sums["tokens"][layer] += mask.sum()
        self.sums["active"][layer] += ((mixing != 0) * mask).sum(dim=(0, 1))
        self.sums["router_weight"][layer] += (router_weights * mask).sum(dim=(0, 1))
        if threshold is not None:
            counted = mask.bool()
            self.sums["threshold"][layer] += (threshold * mask).sum()
            low = torch.where(counted, threshold, torch.inf).amin().double()
            high = torch.where(counted, threshold, -torch.inf).amax().double()
            self.sums["threshold_min"][layer] = torch.minimum(self.sums["threshold_min"][layer], low)
            self.sums["threshold_max"][layer] = torch.maximum(self.sums["threshold_max"][layer], high)

    def _allocate(self, device: torch.device) -> None:
        layers, experts = len(self.blocks), len(self.expert_names)
        zeros = lambda *shape: torch.zeros(shape, dtype=torch.float64, device=device)  # noqa: E731
        self.sums = {
            "tokens": zeros(layers),
            "active": zeros(layers, experts),
            "router_weight": zeros(layers, experts),
            "threshold": zeros(layers),
            "threshold_min": zeros(layers) + torch.inf,
            "threshold_max": zeros(layers) - torch.inf,
        }

    def per_layer(self) -> dict[str, torch.Tensor]:
        """Layer × expert activation rate and mean router weight (CPU, float64)."""
        tokens = self.sums["tokens"].clamp(min=1).unsqueeze(-1).cpu()
        return {"activation": self.sums["active"].cpu() / tokens, "router_weight": self.sums["router_weight"].cpu() / tokens}

    def metrics(self) -> dict[str, float]:
        if not self.sums or not self.sums["tokens"].sum():
            return {}
        tokens = self.sums["tokens"].cpu()
        active = self.sums["active"].cpu()
        metrics = {
            "moa/tokens": float(tokens[0]),
            "moa/mean_active": float(active.sum() / tokens.sum()),
            "moa/num_experts": float(len(self.expert_names)),
        }
        for column, expert in enumerate(self.expert_names):
            metrics[f"moa/activation/{expert}"] = float(active[:, column].sum() / tokens.sum())
            metrics[f"moa/router_weight/{expert}"] = float(self.sums["router_weight"][:, column].sum().cpu() / tokens.sum())
        if self.variant == "sparse":
            metrics["moa/threshold_mean"] = float(self.sums["threshold"].sum().cpu() / tokens.sum())
            metrics["moa/threshold_min"] = float(self.sums["threshold_min"].min())
            metrics["moa/threshold_max"] = float(self.sums["threshold_max"].max())
        return metrics

    def figures(self) -> dict:
        if not self.sums or not self.sums["tokens"].sum():
            return {}
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        panels = self.per_layer()
        layers = len(self.blocks)
        figure, axes = plt.subplots(1, 2, figsize=(3 + 1.5 * len(self.expert_names), 1.8 + 0.3 * layers), squeeze=False, layout="constrained")
        for axis, (key, title) in zip(axes[0], [("activation", "activation rate"), ("router_weight", "mean router weight σ(Rx)")]):
            values = panels[key].numpy()
            image = axis.imshow(values, aspect="auto", vmin=0.0, vmax=1.0, cmap="viridis", interpolation="nearest")
            axis.set_title(f"{self.variant} MoA: {title}", fontsize="medium")
            axis.set_xticks(range(len(self.expert_names)), self.expert_names, rotation=30, ha="right", fontsize=8)
            axis.set_yticks(range(layers), [f"L{layer}" for layer in range(layers)], fontsize=8)
            axis.set_ylabel("layer")
            annotate_cells(axis, values.tolist())
        figure.colorbar(image, ax=axes[0].tolist(), label="fraction / weight", shrink=0.9)
        return {"experts/usage_heatmap.png": figure}
