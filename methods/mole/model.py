from functools import partial

from .. import routing
from ..catalog import register
from ..moe_lora import GateRouter, MoeLoraMethod
from .config import MoleConfig


@register
class Mole(MoeLoraMethod):
    name = "mole"
    config_class = MoleConfig
    peft_type = "MOLE"
    description = "MoLE: 8 LoRA experts (r=4, scale 4.0) per layer, top-2 softmax routing, aux loss 1e-3"

    @property
    def routing_variant(self) -> str:
        return "top_k" if self.config.top_k is not None else "fixed_threshold"

    def make_router(self, in_features: int) -> GateRouter:
        cfg = self.config
        rule = partial(routing.top_k, k=cfg.top_k) if cfg.top_k is not None else partial(routing.fixed_threshold, threshold=cfg.threshold)
        return GateRouter(in_features, cfg.num_experts, rule)

    def routing_tags(self) -> dict[str, str]:
        if self.config.top_k is not None:
            return {"top_k": str(self.config.top_k)}
        return {"threshold": f"{self.config.threshold:g}"}
