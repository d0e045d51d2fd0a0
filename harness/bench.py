"""`adamole-bench bench`: every method's training step side by side on one model and one batch.

Rows, all measured in one process:
- each requested method;
- for each total expert rank N·r found in a mixture method, LoRA with rank N·r and the same
  dropout rate on the same target modules (the dense baseline with the same adapter FLOPs);
- for each mixture method, its "loop reference": the same parameters run with a Python loop over
  experts as the reference implementations do (per expert a `torch.where`, i.e. a host sync, a
  row gather, two skinny GEMMs and an `index_add`), checked in the bench to give the same
  outputs as the vectorized core.
Steps are timed round-robin (one step of every row, then the next round), so load from other
processes on a shared machine hits every row alike; medians are reported.

Evaluation throughput compares our in-memory HFLM path with lm-eval's own CLI on the same
model saved to a temporary folder and the same task YAMLs (`--include_path`).
"""

import copy
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..methods.experts import LoraExperts
from ..methods.registry import Method, build_method
from .config import EvalConfig
from .models import BaseModel, load_base_model, resolve_device
from .train import set_seed

TARGET_MOE_VS_LORA = 1.15  # a mixture step may cost at most this × LoRA(N·r)
TARGET_LOOP_SPEEDUP = 5.0  # the vectorized core must be at least this × faster than the loop
LOOP_EQUALITY_TOLERANCE = 1e-3  # max |logit difference|: fp32 summation-order noise on logits of size ~10-30


@dataclass
class BenchSettings:
    model: str = "tiny-llama"
    methods: list[str] = field(default_factory=lambda: ["lora"])
    method_options: dict[str, dict] = field(default_factory=dict)
    batch_size: int = 8
    seq_len: int = 64
    steps: int = 10
    warmup: int = 2
    lr: float = 1e-3
    seed: int = 0
    device: str = "auto"
    dtype: str = "float32"
    threads: int | None = None
    eval_task: str | None = "copa"  # None skips the evaluation comparison
    eval_limit: int = 50
    eval_batch_size: int = 16
    lm_eval_cli: bool = True  # also time `python -m lm_eval` on the same model and task
    profile: bool = False  # one extra step per row under torch.profiler: where the time goes


# --- the loop-over-experts reference ------------------------------------------------------------


def loop_over_experts(experts: LoraExperts, x: torch.Tensor, weights: torch.Tensor, active=None, projected=None) -> torch.Tensor:
    """LoraExperts.forward computed as the reference does: one gather/GEMM/scatter pass per expert,
    each expert with its own dropout on the rows it selected (`active`/`projected` are not used:
    the loop recomputes everything from x)."""
    x = x.to(experts.lora_A.dtype)
    rows_x = x.reshape(-1, x.shape[-1])
    rows_w = weights.reshape(-1, experts.num_experts).to(x.dtype)
    a = experts.lora_A.view(experts.num_experts, experts.rank, -1)
    b = experts.lora_B.view(experts.lora_B.shape[0], experts.num_experts, experts.rank)
    out = rows_x.new_zeros(rows_x.shape[0], b.shape[0])
    for i in range(experts.num_experts):
        selected = torch.where(rows_w[:, i] != 0)[0]  # nonzero: a device→host sync per expert
        if len(selected) == 0:
            continue
        h = torch.nn.functional.dropout(rows_x[selected], experts.dropout_p, experts.training) @ a[i].t()
        y = (h @ b[:, i].t()) * (experts.scaling * rows_w[selected, i, None])
        out = out.index_add(0, selected, y)
    return out.view(*x.shape[:-1], -1)


@contextmanager
def loop_reference(model: nn.Module):
    """Run every LoraExperts of `model` through `loop_over_experts` inside the block.

    Patched on the class, not the instances: methods reach the core through subclasses too (MoA's
    GatedLora calls `super().forward(x, gate)`), and all of them must take the loop path.
    """
    if not any(isinstance(m, LoraExperts) for m in model.modules()):
        raise ValueError(f"{type(model).__name__} has no LoraExperts to run as a loop")
    vectorized = LoraExperts.forward
    LoraExperts.forward = loop_over_experts
    try:
        yield
    finally:
        LoraExperts.forward = vectorized


def expert_modules(model: nn.Module) -> list[LoraExperts]:
    return [m for m in model.modules() if isinstance(m, LoraExperts)]


# --- one benchmarked row ------------------------------------------------------------------------


@dataclass
class Row:
    label: str
    method: Method
    model: nn.Module
    optimizer: torch.optim.Optimizer
    loop: bool = False
    baseline: str | None = None  # label of the LoRA row this row is compared with
    seconds: list[float] = field(default_factory=list)
    saved_activations_mb: float = 0.0
    peak_cuda_mb: float | None = None

    def step(self, batch: dict) -> None:
        with loop_reference(self.model) if self.loop else _nothing():
            loss = self.model(**batch).loss
            aux = self.method.aux_loss(self.model)
            total = loss if aux is None else loss + self.method.aux_loss_coeff * aux
            total.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


@contextmanager
def _nothing():
    yield


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextmanager
def count_saved_activations(into: list[int]):
    """Sum the bytes of distinct tensors autograd saves for backward: the activation memory of a step."""
    seen: set[int] = set()

    def pack(tensor: torch.Tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in seen:
            seen.add(storage.data_ptr())
            into.append(storage.nbytes())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        yield


def _make_row(label: str, method: Method, base: BaseModel, device: torch.device, settings: BenchSettings, **extra) -> Row:
    set_seed(settings.seed)
    model = method.apply(copy.deepcopy(base.model).to(device))
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    return Row(label, method, model, torch.optim.AdamW(params, lr=settings.lr), **extra)


def build_rows(settings: BenchSettings, base: BaseModel, device: torch.device) -> list[Row]:
    rows: list[Row] = []
    for name in settings.methods:
        method = build_method(name, settings.method_options.get(name))
        if not method.trains:
            continue
        rows.append(_make_row(name, method, base, device, settings))
    for row in [r for r in rows if expert_modules(r.model)]:
        # The same work as the mixture's experts: same modules, same total rank, same dropout rate.
        total_rank = expert_modules(row.model)[0].lora_A.shape[0]
        dropout = getattr(row.method.config, "dropout", 0.0)
        label = f"lora r={total_rank}" + (f" p={dropout:g}" if dropout else "")
        if label not in [r.label for r in rows]:
            options = {"rank": total_rank, "dropout": dropout}
            targets = getattr(row.method.config, "target_modules", None)
            if targets:
                options["target_modules"] = list(targets)
            rows.append(_make_row(label, build_method("lora", options), base, device, settings))
        row.baseline = label
        # The loop reference shares the mixture row's model and optimizer: same parameters.
        rows.append(Row(f"{row.label} loop-ref", row.method, row.model, row.optimizer, loop=True, baseline=row.label))
    return rows


def random_batch(base: BaseModel, settings: BenchSettings, device: torch.device) -> dict:
    generator = torch.Generator().manual_seed(settings.seed)
    ids = torch.randint(3, base.model.config.vocab_size, (settings.batch_size, settings.seq_len), generator=generator)
    return {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device), "labels": ids.to(device)}


def loop_max_abs_difference(row: Row, batch: dict) -> float:
    """Max |logit difference| between the vectorized forward and the loop reference (eval mode)."""
    row.model.eval()
    with torch.no_grad():
        vectorized = row.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        with loop_reference(row.model):
            looped = row.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    row.model.train()
    return float((vectorized - looped).abs().max())


def measure_training(settings: BenchSettings, base: BaseModel, device: torch.device) -> list[dict]:
    rows = build_rows(settings, base, device)
    batch = random_batch(base, settings, device)
    for row in rows:  # warmup; then one step with the memory probes on
        for _ in range(settings.warmup):
            row.step(batch)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        sizes: list[int] = []
        with count_saved_activations(sizes):
            row.step(batch)
        row.saved_activations_mb = sum(sizes) / 2**20
        if device.type == "cuda":
            row.peak_cuda_mb = torch.cuda.max_memory_allocated(device) / 2**20
    for _ in range(settings.steps):  # round-robin: every row sees the same machine conditions
        for row in rows:
            _synchronize(device)
            started = time.perf_counter()
            row.step(batch)
            _synchronize(device)
            row.seconds.append(time.perf_counter() - started)

    tokens = settings.batch_size * settings.seq_len
    medians = {row.label: statistics.median(row.seconds) for row in rows}
    results = []
    for row in rows:
        median = medians[row.label]
        result = {
            "label": row.label,
            "method": row.method.name,
            "loop_reference": row.loop,
            "step_ms_median": 1000 * median,
            "step_ms_all": [1000 * s for s in row.seconds],
            "tokens_per_second": tokens / median,
            "saved_activations_mb": row.saved_activations_mb,
            "peak_cuda_mb": row.peak_cuda_mb,
            "trainable_parameters": sum(p.numel() for p in row.model.parameters() if p.requires_grad),
            "baseline": row.baseline,
            "ratio_to_baseline": median / medians[row.baseline] if row.baseline else None,
        }
        if settings.profile:
            result["profile"] = profile_step(row, batch, device)
            result["profile"]["gflop_per_second"] = result["profile"]["matmul_gflop"] / median  # profiling slows the step
        if row.loop:
            result["max_abs_logit_difference"] = loop_max_abs_difference(row, batch)
            result["outputs_match"] = result["max_abs_logit_difference"] <= LOOP_EQUALITY_TOLERANCE
        results.append(result)
    return results


# --- where a step's time goes ---------------------------------------------------------------------

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


def profile_step(row: Row, batch: dict, device: torch.device) -> dict:
    """One training step under torch.profiler: self time per op category, and matmul FLOPs.

    Self time (not total) so nested ops are counted once: CPU time on a CPU, kernel time on CUDA.
    FLOPs are the profiler's count for matmul-type ops, which is what bounds a compute-bound step.
    """
    from torch.profiler import ProfilerActivity, profile

    on_cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_cuda else [])
    with profile(activities=activities, with_flops=True) as profiler:
        row.step(batch)
        _synchronize(device)

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


def matmul_peak(base: BaseModel, settings: BenchSettings, device: torch.device, repeats: int = 20) -> float:
    """GFLOP/s of a plain GEMM with the model's MLP shape (tokens × hidden @ hidden × intermediate).

    The ceiling a training step can approach: a step whose matmul GFLOP/s is near it is compute-bound,
    and only fewer FLOPs (fewer tokens, a smaller model) would make it faster.
    """
    config = base.model.config
    hidden, intermediate = config.hidden_size, getattr(config, "intermediate_size", 4 * config.hidden_size)
    dtype = getattr(torch, settings.dtype)
    x = torch.randn(settings.batch_size * settings.seq_len, hidden, device=device, dtype=dtype)
    w = torch.randn(hidden, intermediate, device=device, dtype=dtype)
    x @ w
    _synchronize(device)
    started = time.perf_counter()
    for _ in range(repeats):
        x @ w
    _synchronize(device)
    return 2 * x.shape[0] * hidden * intermediate * repeats / (time.perf_counter() - started) / 1e9


# --- evaluation throughput ----------------------------------------------------------------------


def _requests(samples: list[dict]) -> int:
    """Loglikelihood requests: one per answer choice per doc."""
    return sum(len(sample["loglikelihoods"]) for sample in samples)


def measure_evaluation(settings: BenchSettings, base: BaseModel, device: torch.device) -> dict:
    from ..tasks.registry import TASK_DIR
    from ..tasks.sources import load_task
    from .evaluate import evaluate, lm_eval_task_name

    data = load_task(settings.eval_task)
    config = EvalConfig(batch_size=settings.eval_batch_size, limit=settings.eval_limit)
    model = copy.deepcopy(base.model).to(device).eval()
    evaluate(model, base.tokenizer, data, EvalConfig(batch_size=settings.eval_batch_size, limit=2))  # warm lm-eval's caches
    started = time.perf_counter()
    result = evaluate(model, base.tokenizer, data, config)
    seconds = time.perf_counter() - started
    requests = _requests(result.samples)
    report = {
        "task": result.lm_eval_task,
        "docs": len(result.samples),
        "requests": requests,
        "in_memory": {"seconds": seconds, "requests_per_second": requests / seconds, "acc": result.metrics.get("acc")},
    }
    if settings.lm_eval_cli:
        report["lm_eval_cli"] = _time_lm_eval_cli(settings, base, device, lm_eval_task_name(data.spec.name, config.protocol), TASK_DIR / "lm_eval", requests)
        report["in_memory_speedup"] = report["lm_eval_cli"]["wall_seconds"] / seconds
    return report


def _time_lm_eval_cli(settings: BenchSettings, base: BaseModel, device: torch.device, task: str, include: Path, requests: int) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        saved, output = Path(folder) / "model", Path(folder) / "output"
        base.model.save_pretrained(saved)
        base.tokenizer.save_pretrained(saved)
        command = [
            sys.executable, "-m", "lm_eval",
            "--model", "hf", "--model_args", f"pretrained={saved},dtype={settings.dtype}",
            "--tasks", task, "--include_path", str(include),
            "--limit", str(settings.eval_limit), "--batch_size", str(settings.eval_batch_size),
            "--device", str(device), "--output_path", str(output),
        ]  # fmt: skip
        started = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, env=os.environ.copy())
        wall = time.perf_counter() - started
        if done.returncode != 0:
            return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"}
        results = json.loads(next(output.rglob("results_*.json")).read_text())
    evaluation = float(results.get("total_evaluation_time_seconds", "nan"))
    return {
        "wall_seconds": wall,  # process start, imports, task indexing, model load, scoring
        "evaluation_seconds": evaluation,  # lm-eval's own clock (model load + scoring)
        "requests_per_second": requests / wall,
        "acc": results["results"][task].get("acc,none"),
    }


# --- the command --------------------------------------------------------------------------------


def run_bench(settings: BenchSettings) -> dict:
    if settings.threads:
        torch.set_num_threads(settings.threads)
    device = resolve_device(settings.device)
    base = load_base_model(settings.model, dtype=settings.dtype, device="cpu")
    results = {
        "settings": asdict(settings),
        "device": str(device),
        "threads": torch.get_num_threads(),
        "targets": {"moe_vs_lora_max": TARGET_MOE_VS_LORA, "loop_speedup_min": TARGET_LOOP_SPEEDUP},
        "training": measure_training(settings, base, device),
    }
    results["verdicts"] = verdicts(results["training"])
    if settings.profile:
        results["matmul_peak_gflop_per_second"] = matmul_peak(base, settings, device)
    if settings.eval_task:
        results["evaluation"] = measure_evaluation(settings, base, device)
    return results


def verdicts(rows: list[dict]) -> dict[str, dict]:
    """Per mixture method: its ratio to LoRA(N·r), its speedup over the loop, and whether targets hold."""
    by_label = {row["label"]: row for row in rows}
    out = {}
    for row in rows:
        if not row["loop_reference"]:
            continue
        mixture = by_label[row["baseline"]]
        vs_lora, speedup = mixture["ratio_to_baseline"], row["ratio_to_baseline"]
        out[mixture["label"]] = {
            "vs_lora": vs_lora,
            "loop_speedup": speedup,
            "meets_lora_target": vs_lora <= TARGET_MOE_VS_LORA,
            "meets_loop_target": speedup >= TARGET_LOOP_SPEEDUP,
            "loop_outputs_match": row["outputs_match"],
        }
    return out


def render(results: dict):
    from rich.table import Table

    table = Table("row", "step ms (median)", "tokens/s", "saved act. MB", "peak CUDA MB", "vs", "ratio", title=f"training step, {results['device']}, {results['threads']} threads")
    for row in results["training"]:
        ratio = f"{row['ratio_to_baseline']:.2f}×" if row["ratio_to_baseline"] else "–"
        cuda = f"{row['peak_cuda_mb']:.0f}" if row["peak_cuda_mb"] is not None else "–"
        table.add_row(row["label"], f"{row['step_ms_median']:.1f}", f"{row['tokens_per_second']:.0f}", f"{row['saved_activations_mb']:.1f}", cuda, row["baseline"] or "–", ratio)
    tables = [table]
    if results["verdicts"]:
        targets = Table("mixture", f"vs LoRA(N·r) (≤ {TARGET_MOE_VS_LORA})", f"loop speedup (≥ {TARGET_LOOP_SPEEDUP})", "loop = vectorized", title="targets")
        mark = {True: "[green]✓[/]", False: "[red]✗[/]"}
        for name, v in results["verdicts"].items():
            targets.add_row(name, f"{v['vs_lora']:.2f}× {mark[v['meets_lora_target']]}", f"{v['loop_speedup']:.1f}× {mark[v['meets_loop_target']]}", mark[v["loop_outputs_match"]])
        tables.append(targets)
    profiled = [row for row in results["training"] if "profile" in row]
    if profiled:
        categories = [name for name, _ in OP_CATEGORIES] + ["other"]
        table = Table("row", "matmul GFLOP/s", *categories, title=f"where a step's time goes (share of op self time, one profiled step); plain GEMM of this shape: {results['matmul_peak_gflop_per_second']:.1f} GFLOP/s")
        for row in profiled:
            share = row["profile"]["share"]
            table.add_row(row["label"], f"{row['profile']['gflop_per_second']:.1f}", *(f"{100 * share.get(name, 0.0):.0f}%" for name in categories))
        tables.append(table)
    evaluation = results.get("evaluation")
    if evaluation:
        table = Table("path", "seconds", "requests/s", "acc", title=f"eval loglikelihood throughput: {evaluation['task']}, {evaluation['docs']} docs, {evaluation['requests']} requests")
        memory = evaluation["in_memory"]
        table.add_row("in-memory HFLM (model loaded)", f"{memory['seconds']:.1f}", f"{memory['requests_per_second']:.1f}", f"{memory['acc']:.3f}")
        cli = evaluation.get("lm_eval_cli")
        if cli and "error" in cli:
            table.add_row("lm-eval CLI", "failed", cli["error"], "–")
        elif cli:
            table.add_row("lm-eval CLI (process wall time)", f"{cli['wall_seconds']:.1f}", f"{cli['requests_per_second']:.1f}", f"{cli['acc']:.3f}")
        tables.append(table)
    return tables


def log_to_mlflow(results: dict, experiment: str) -> str:
    from .provenance import code_version, hardware
    from .tracking import Tracker

    tracker = Tracker(experiment)
    settings = results["settings"]
    tags = {"kind": "bench", "model": settings["model"], **code_version(), **hardware(torch.device(results["device"]))}
    with tracker.run(f"bench {time.strftime('%Y-%m-%d %H:%M:%S')}", tags) as run_id:
        tracker.log_params(run_id, {**settings, "threads": results["threads"]})
        metrics = {}
        for row in results["training"]:
            metrics[f"step_ms/{row['label']}"] = row["step_ms_median"]
            if row["ratio_to_baseline"]:
                metrics[f"ratio/{row['label']}"] = row["ratio_to_baseline"]
        evaluation = results.get("evaluation") or {}
        if evaluation:
            metrics["eval/in_memory_requests_per_second"] = evaluation["in_memory"]["requests_per_second"]
            if "requests_per_second" in evaluation.get("lm_eval_cli", {}):
                metrics["eval/lm_eval_cli_requests_per_second"] = evaluation["lm_eval_cli"]["requests_per_second"]
        tracker.log_metrics(run_id, metrics)  # names are cleaned by the tracker
        tracker.log_dict(run_id, results, "bench.json")
    return run_id
