"""Where a bench step's time goes: op self time by category under torch.profiler, and the GEMM ceiling."""

import time

import torch
from torch.profiler import ProfilerActivity, profile

from ..model.loading import BaseModel


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# aten operator name fragments → category; first match wins, unmatched ops count as "other".
# "gather/sync" is the loop reference's signature: nonzero (a host sync on a GPU), row gathers, index_add.
OP_CATEGORIES = [
    ("gather/sync", ("nonzero", "scatter", "gather", "index_add", "index_select", "aten::index", "aten::where", "item", "_local_scalar_dense")),
    ("attention", ("scaled_dot_product", "flash_attention", "efficient_attention")),
    ("matmul", ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear", "aten::baddbmm")),
    ("optimizer", ("_foreach", "adamw", "lerp", "addcdiv", "addcmul")),
    ("softmax/loss", ("softmax", "cross_entropy", "nll_loss")),
    ("copies", ("copy_", "clone", "contiguous", "cat", "stack", "to_copy", "empty", "zero_", "fill_")),
    ("pointwise", ("mul", "add", "sub", "div", "silu", "sigmoid", "pow", "rsqrt", "mean", "neg", "exp", "dropout", "bernoulli", "sum")),
]


def op_category(name: str) -> str:
    for category, fragments in OP_CATEGORIES:
        if any(fragment in name for fragment in fragments):
            return category
    return "other"


def profile_step(row, batch: dict, device: torch.device) -> dict:
    """One training step under torch.profiler: self time per op category, and matmul FLOPs.

    Self time (not total) so nested ops are counted once: CPU time on a CPU, kernel time on CUDA.
    FLOPs are the profiler's count for matmul-type ops, which is what bounds a compute-bound step.
    """

    on_cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_cuda else [])
    with profile(activities=activities, with_flops=True) as profiler:
        row.step(batch)
        synchronize(device)

    def self_seconds(event) -> float:
        return (event.self_device_time_total if on_cuda else event.self_cpu_time_total) / 1e6

    categories: dict[str, float] = {}
    calls: dict[str, int] = {}
    flops = 0
    for event in profiler.key_averages():
        category = op_category(event.key)
        categories[category] = categories.get(category, 0.0) + self_seconds(event)
        calls[category] = calls.get(category, 0) + event.count
        flops += event.flops or 0
    total = sum(categories.values())
    slowest = sorted(profiler.key_averages(), key=self_seconds, reverse=True)[:8]
    return {
        "seconds": total,
        "top_ops": {event.key: self_seconds(event) / total for event in slowest},
        "share": {name: seconds / total for name, seconds in sorted(categories.items(), key=lambda item: -item[1])},
        "calls": calls,
        "matmul_gflop": flops / 1e9,  # the caller divides by the unprofiled step time for a rate
    }


def matmul_peak(base: BaseModel, settings, device: torch.device, dtype: torch.dtype, repeats: int = 20) -> float:
    """GFLOP/s of a plain GEMM with the model's MLP shape (tokens × hidden @ hidden × intermediate).

    The ceiling a training step can approach: a step whose matmul GFLOP/s is near it is compute-bound,
    and only fewer FLOPs (fewer tokens, a smaller model) would make it faster.
    """
    config = base.model.config
    hidden, intermediate = config.hidden_size, getattr(config, "intermediate_size", 4 * config.hidden_size)
    x = torch.randn(settings.batch_size * settings.seq_len, hidden, device=device, dtype=dtype)
    w = torch.randn(hidden, intermediate, device=device, dtype=dtype)
    x @ w
    synchronize(device)
    started = time.perf_counter()
    for _ in range(repeats):
        x @ w
    synchronize(device)
    return 2 * x.shape[0] * hidden * intermediate * repeats / (time.perf_counter() - started) / 1e9
