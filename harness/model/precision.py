"""Mixed precision: how the frozen base model computes, decided once per sweep.

`resolve_precision(requested, device, model)` turns the `precision` setting (auto | fp32 | bf16 |
fp16) into a `Precision`, and everything that computes goes through it:

- `prepare(model)` once on the frozen base: its nn.Linear weights (attention, MLP, output head) are
  stored in the compute dtype, so autocast does not recast them at every op; embeddings, norms and
  the residual stream stay fp32. On CPU, attention runs in fp32 (PyTorch's bf16 CPU flash-attention
  backward is slower than its fp32 one). docs/performance.md, "Mixed precision", has the numbers.
- `autocast()` around forward + loss: matmuls run in the compute dtype; trainable parameters
  (adapters, routers) and the optimizer state stay fp32 (master weights); transformers' causal-LM
  loss upcasts the logits, so the loss is fp32.
- `grad_scaler()`: a real `torch.amp.GradScaler` for fp16 on CUDA, a disabled one (same API, no
  work) otherwise.

Code that must stay in fp32 inside an autocast region (a router, say) wraps it in
`full_precision(device_type)` and casts its inputs with `.float()`.
"""

# Imported where used: transformers (as in loading.py)
import functools
from contextlib import nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar, cast

import torch
from torch import nn

from ...base.errors import UserError
from ...base.machine import cpu_flags
from ...base.upstream import attention_implementation, sdpa_attention

if TYPE_CHECKING:  # transformers is slow to import; here its classes are annotations only
    from transformers import PreTrainedModel

ModelT = TypeVar("ModelT", bound=nn.Module)
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# Models for which `auto` may pick bf16: where it measured faster. The 64-wide tiny-llama's
# GEMMs are too small for bf16 to pay (its step is 1.5x slower in bf16), and hub models default
# to fp32, as the papers trained them.
AUTO_BF16_MODELS = frozenset({"smollm2-135m"})
FP32_ATTENTION = "sdpa_fp32"  # transformers attention implementation registered below


def cpu_bf16_flags() -> tuple[str, ...]:
    """The CPU's fast-bf16 instruction sets (AMX, AVX512-BF16) as /proc/cpuinfo names them, if torch
    uses them: held below AVX512 (`ATEN_CPU_CAPABILITY=avx2`, as a CPU without them runs), it has none."""
    if not torch.backends.cpu.get_cpu_capability().startswith("AVX512"):
        return ()
    flags = cpu_flags()
    return tuple(flag for flag in ("amx_bf16", "avx512_bf16") if flag in flags)


def full_precision(device_type: str):
    """A region inside autocast that computes in the inputs' own dtype (cast them to fp32)."""
    return torch.autocast(device_type, enabled=False)


@dataclass(frozen=True)
class Precision:
    name: str  # fp32 | bf16 | fp16, never auto
    device_type: str  # cpu | cuda
    reason: str = "requested"  # why: "requested", or what `auto` found

    @property
    def compute_dtype(self) -> torch.dtype:
        return DTYPES[self.name]

    @property
    def mixed(self) -> bool:
        return self.name != "fp32"

    def describe(self) -> str:
        return f"precision {self.name} ({self.reason})"

    def tags(self) -> dict[str, str]:
        return {"precision": self.name, "precision_reason": self.reason}

    def autocast(self):
        """Context for forward + loss; fp32 enters nothing, so its numbers are exactly the unmixed ones."""
        return torch.autocast(self.device_type, dtype=self.compute_dtype) if self.mixed else nullcontext()

    def grad_scaler(self) -> torch.amp.GradScaler:
        return torch.amp.GradScaler(self.device_type, enabled=self.name == "fp16")

    def prepare(self, model: ModelT) -> ModelT:
        """Store the frozen base's Linear weights in the compute dtype (once, in place); see module doc.

        Call it on the base model before adapters are added: only frozen Linear layers are cast,
        and an output head tied to the input embedding gets its own copy, so the embedding stays fp32.
        """
        if not self.mixed:
            return model
        for module in model.modules():
            if isinstance(module, nn.Linear):
                for name, tensor in module.named_parameters(recurse=False):
                    if not tensor.requires_grad:  # `param.data = ...` would also retype a tied embedding
                        setattr(module, name, nn.Parameter(tensor.detach().to(self.compute_dtype), requires_grad=False))
        config = getattr(model, "config", None)
        if self.device_type == "cpu" and attention_implementation(config) == "sdpa":
            _register_fp32_attention()
            cast("PreTrainedModel", model).set_attn_implementation(FP32_ATTENTION)  # a transformers model: it has an sdpa config
        return model


@functools.cache
def _register_fp32_attention() -> None:
    """transformers' SDPA attention with inputs of at least fp32 (float64 stays) and autocast off; same masks as "sdpa"."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    sdpa_attention_forward, sdpa_mask = sdpa_attention()

    def attention(module, query, key, value, attention_mask, **kwargs):
        dtype = torch.promote_types(query.dtype, torch.float32)
        with full_precision(query.device.type):
            return sdpa_attention_forward(module, query.to(dtype), key.to(dtype), value.to(dtype), attention_mask, **kwargs)

    AttentionInterface.register(FP32_ATTENTION, attention)
    AttentionMaskInterface.register(FP32_ATTENTION, sdpa_mask)


def resolve_precision(requested: str, device: torch.device | str, model_name: str) -> Precision:
    """The precision a sweep runs in; fails (one line) on a combination the hardware cannot run."""
    device_type = torch.device(device).type
    if requested not in PRECISIONS:
        raise UserError(f"unknown precision '{requested}'; valid: {', '.join(PRECISIONS)}")
    cuda = device_type == "cuda"
    if requested == "fp16" and not cuda:
        raise UserError("precision fp16 needs a CUDA GPU (fp16 matmuls are slow on a CPU); use precision bf16 or fp32")
    if requested == "bf16" and cuda and not torch.cuda.is_bf16_supported():
        raise UserError("this GPU has no bf16 support; use precision fp16 (with loss scaling) or fp32")
    if requested != "auto":
        return Precision(requested, device_type)
    if model_name not in AUTO_BF16_MODELS:
        return Precision("fp32", device_type, f"auto: fp32 for {model_name}")
    if cuda:
        fast = torch.cuda.is_bf16_supported()
        return Precision("bf16" if fast else "fp32", device_type, "auto: GPU has bf16" if fast else "auto: GPU has no bf16")
    flags = cpu_bf16_flags()
    if not flags:
        return Precision("fp32", device_type, "auto: CPU has no AMX/AVX512-BF16")
    return Precision("bf16", device_type, f"auto: CPU has {'AMX' if 'amx_bf16' in flags else 'AVX512-BF16'}")
