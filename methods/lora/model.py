from torch import nn

from ..registry import Method, register
from .config import LoraConfig


@register
class Lora(Method):
    name = "lora"
    config_class = LoraConfig
    description = "LoRA (stock PEFT); reference defaults r=32, alpha=16, dropout 0.05 on q,k,v,o"
    peft_type = "LORA"

    def apply(self, model: nn.Module) -> nn.Module:
        from peft import LoraConfig as PeftLoraConfig
        from peft import get_peft_model

        peft_config = PeftLoraConfig(
            r=self.config.rank,
            lora_alpha=self.config.alpha,
            lora_dropout=self.config.dropout,
            target_modules=list(self.config.target_modules),
            bias="none",
            task_type="CAUSAL_LM",
        )
        return get_peft_model(model, peft_config)
