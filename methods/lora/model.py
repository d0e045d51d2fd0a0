# Imported where used: peft (about 3 s with the transformers it pulls in; the registry, configs and the plan import this module without building a model)
from collections.abc import Iterator
from contextlib import contextmanager
from typing import cast

import torch
from torch import nn

from ..catalog import register
from ..method import Method
from .config import LoraConfig


@register
class Lora(Method):
    name = "lora"
    config_class = LoraConfig
    description = "LoRA (stock PEFT); reference defaults r=32, alpha=16, dropout 0.05 on q,k,v,o"
    peft_type = "LORA"
    mergeable = True

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

    @contextmanager
    def scoring(self, model: nn.Module, compute_dtype: torch.dtype = torch.float32) -> Iterator[nn.Module]:
        """Merged into the base weights (one GEMM per layer instead of three) when scoring in fp32.

        Restored bit for bit on exit from a copy of the original weights (PEFT's unmerge subtracts,
        which does not give them back exactly). In bf16/fp16 the adapter stays separate: the merged
        weight would be rounded to 8 (or 11) mantissa bits, which rounds part of a small update
        away (docs/performance.md, "Mixed precision").
        """
        from peft import PeftModel
        from peft.tuners.lora import LoraLayer

        if compute_dtype != torch.float32:
            yield model
            return
        assert isinstance(model, PeftModel), "scoring takes the model `apply` returned"
        bases = [cast(nn.Linear, module.get_base_layer()) for module in model.modules() if isinstance(module, LoraLayer)]
        originals = [base.weight.detach().to("cpu", copy=True) for base in bases]  # host RAM, not GPU memory
        model.merge_adapter()
        try:
            yield model
        finally:
            model.unmerge_adapter()
            with torch.no_grad():
                for base, weight in zip(bases, originals):
                    base.weight.copy_(weight)
