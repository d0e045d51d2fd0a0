from ..catalog import register
from ..moe_lora import AdaptiveThresholdRouter, MoeLoraMethod
from .config import AdaMoleConfig


@register
class AdaMole(MoeLoraMethod):
    name = "adamole"
    config_class = AdaMoleConfig
    peft_type = "ADAMOLE"
    description = "AdaMoLE: 8 LoRA experts (r=4, scale 4.0) per layer, learned per-token threshold (max 1/8), aux loss 1e-3"
    routing_variant = "adaptive_threshold"

    def make_router(self, in_features: int) -> AdaptiveThresholdRouter:
        return AdaptiveThresholdRouter(in_features, self.config.num_experts, self.config.threshold_cap)

    def routing_tags(self) -> dict[str, str]:
        return {"max_threshold": f"{self.config.threshold_cap:g}"}
