"""Mixed-precision and evaluation measurements behind docs/performance.md ("Mixed precision").

    python scripts/measure_precision.py step [--rounds 5] [--threads 1] [--method lora]
    python scripts/measure_precision.py eval [--task copa] [--limit 50] [--rounds 2] [--threads 1]
    python scripts/measure_precision.py parity [--threads 1]

`step`: one training step (forward, loss, backward, AdamW) of the method on SmolLM2-135M with one
random-token batch of 8 × 128, every position supervised (as `adamole-bench bench`), in fp32 and in
four bf16 variants (frozen weights fp32 or stored bf16, attention bf16 or fp32), timed round-robin
in one process (median CPU seconds; read the ratios).
`eval`: one lm-eval scoring pass of a LoRA model (nonzero update) and of an AdaMoLE model: LoRA in
fp32 unmerged / merged (what `run` does in fp32) and in bf16 with fp32 / bf16-stored frozen weights,
AdaMoLE in bf16 with and without expert statistics.
`parity`: the CI smoke suite (configs/smoke.yaml, every method, seeds 0 and 1) in fp32 and in bf16:
accuracy and training-loss curve per trial (what tests/test_precision.py checks on a subset).
"""

import argparse
import copy
import statistics
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from rich.console import Console

from adamole_bench.base.paths import offline_defaults
from adamole_bench.harness.evaluate.scoring import evaluate
from adamole_bench.harness.model.loading import load_base_model
from adamole_bench.harness.model.precision import FP32_ATTENTION, Precision
from adamole_bench.harness.report.results import rows_from_mlflow
from adamole_bench.harness.run.sweep import run_sweep
from adamole_bench.harness.settings.config import EvalConfig
from adamole_bench.harness.settings.load import load_config
from adamole_bench.harness.store.tracking import Tracker
from adamole_bench.methods.registry import build_method
from adamole_bench.tasks.sources import load_task

FP32, BF16 = Precision("fp32", "cpu"), Precision("bf16", "cpu")


def _round_robin(variants: dict, rounds: int) -> dict[str, float]:
    """Each variant once per round (load from other processes hits all alike); median CPU seconds.

    CPU time of this process, not wall time: on a shared machine the wall clock also counts the time
    the OS gave to other processes (with --threads 1 the two agree on an idle machine)."""
    times: dict[str, list[float]] = {name: [] for name in variants}
    for run in variants.values():
        run()  # warm-up
    for _ in range(rounds):
        for name, run in variants.items():
            started = time.process_time()
            run()
            times[name].append(time.process_time() - started)
    return {name: statistics.median(values) for name, values in times.items()}


def _stepper(base, method_name: str, precision: Precision, cast_weights: bool, fp32_attention: bool):
    model = copy.deepcopy(base.model)
    if precision.mixed:
        prepared = precision.prepare(copy.deepcopy(base.model))  # what `run` does: both halves
        if cast_weights:
            model = prepared
        model.set_attn_implementation(FP32_ATTENTION if fp32_attention else "sdpa")
    method = build_method(method_name)
    torch.manual_seed(0)
    model = method.apply(model).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    ids = torch.randint(0, base.model.config.vocab_size, (8, 128), generator=torch.Generator().manual_seed(0))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}

    def step():
        with precision.autocast():
            loss = model(**batch).loss
            aux = method.aux_loss(model)
        (loss if aux is None else loss + method.aux_loss_coeff * aux).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def measure_step(args) -> None:
    base = load_base_model("smollm2-135m")
    variants = {
        "fp32": _stepper(base, args.method, FP32, False, False),
        "bf16 autocast, fp32 weights, bf16 attention": _stepper(base, args.method, BF16, False, False),
        "bf16 autocast, bf16 weights, bf16 attention": _stepper(base, args.method, BF16, True, False),
        "bf16 autocast, fp32 weights, fp32 attention": _stepper(base, args.method, BF16, False, True),
        "bf16 autocast, bf16 weights, fp32 attention (= precision bf16)": _stepper(base, args.method, BF16, True, True),
    }
    medians = _round_robin(variants, args.rounds)
    for name, seconds in medians.items():
        print(f"{args.method:8s} {name:63s} {seconds:6.2f} s   {medians['fp32'] / seconds:.2f}x fp32")


def _with_update(method, model):
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, tensor in model.named_parameters():
            if "lora_B" in name:
                tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.01)
    return model.eval()


def measure_eval(args) -> None:
    base = load_base_model("smollm2-135m")
    data = load_task(args.task)
    config = EvalConfig(batch_size=16, limit=args.limit)
    quiet = EvalConfig(batch_size=16, limit=args.limit, expert_stats=False)
    lora = build_method("lora")
    fp32_lora = _with_update(lora, lora.apply(copy.deepcopy(base.model)))
    bf16_lora = _with_update(lora, lora.apply(BF16.prepare(copy.deepcopy(base.model))))
    recast_lora = _with_update(lora, lora.apply(copy.deepcopy(base.model)))  # fp32 weights, recast by autocast
    recast_lora.set_attn_implementation(FP32_ATTENTION)
    adamole = build_method("adamole")
    mixture = adamole.apply(BF16.prepare(copy.deepcopy(base.model))).eval()

    def merged():
        with lora.scoring(fp32_lora) as scored:
            evaluate(scored, base.tokenizer, data, config)

    def with_stats(eval_config):
        def run():
            with adamole.statistics(mixture) if eval_config.expert_stats else nullcontext():
                evaluate(mixture, base.tokenizer, data, eval_config, BF16)

        return run

    variants = {
        "lora fp32 unmerged": lambda: evaluate(fp32_lora, base.tokenizer, data, config),
        "lora fp32 merged (run, precision=fp32)": merged,
        "lora bf16, fp32 weights recast by autocast": lambda: evaluate(recast_lora, base.tokenizer, data, config, BF16),
        "lora bf16, weights stored bf16 (run, precision=bf16)": lambda: evaluate(bf16_lora, base.tokenizer, data, config, BF16),
        "adamole bf16, expert statistics on": with_stats(config),
        "adamole bf16, expert statistics off": with_stats(quiet),
    }
    medians = _round_robin(variants, args.rounds)
    for name, seconds in medians.items():
        print(f"{args.task} {args.limit} docs  {name:52s} {seconds:6.1f} s")


def measure_parity(args) -> None:

    smoke = Path(__file__).resolve().parents[1] / "configs" / "smoke.yaml"
    runs: dict[str, dict] = {}
    for precision in ("fp32", "bf16"):
        config = load_config(smoke, [f"precision={precision}"])
        with tempfile.TemporaryDirectory() as store:
            tracker = Tracker(config.experiment, uri=f"sqlite:///{store}/mlflow.db")
            run_sweep(config, Console(quiet=True), tracker)
            for row in rows_from_mlflow(tracker, model=config.model):
                history = sorted(tracker.client.get_metric_history(row["run_id"], "train/loss"), key=lambda m: m.step)
                runs.setdefault(f"{row['method']} seed {row['seed']}", {})[precision] = (row["acc"], [m.value for m in history])
    print("trial               acc fp32  acc bf16  |  loss, relative |bf16 - fp32|: steps 1-5 max, mean of 1-20, mean of 1-100")
    for name, result in sorted(runs.items()):
        (acc32, loss32), (acc16, loss16) = result["fp32"], result["bf16"]
        line = f"{name:18s}  {acc32:8.4f}  {acc16:8.4f}"
        if loss32:
            first = max(abs(a - b) / a for a, b in zip(loss32[:5], loss16[:5]))
            early = abs(sum(loss16[:20]) - sum(loss32[:20])) / sum(loss32[:20])
            whole = abs(sum(loss16) - sum(loss32)) / sum(loss32)
            line += f"  |  {first:.4f}  {early:.4f}  {whole:.4f}"
        print(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["step", "eval", "parity"])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--method", default="lora")
    parser.add_argument("--task", default="copa")
    parser.add_argument("--limit", type=int, default=50)
    args = parser.parse_args()
    offline_defaults()
    torch.set_num_threads(args.threads)
    {"step": measure_step, "eval": measure_eval, "parity": measure_parity}[args.what](args)


if __name__ == "__main__":
    main()
