"""What agreeing on a stop signal costs a multi-process trial (docs/distributed.md, "Step checkpoints of a
trial on several processes"): one integer all-reduce per optimizer step.

    torchrun --nproc_per_node 2 scripts/measure_stop_signal.py [--rounds 3] [--steps 40] [--calls 2000]

On each rank: the all-reduce alone (`Context.stop_signal`, median of `--calls` calls), and the optimizer
step of a LoRA on tiny-llama (fruit_or_color, batch 4 per rank) trained with step checkpoints (the
all-reduce after every step; one save, at the last step, left out of the timing) and without (no
all-reduce), alternating in one process; median seconds between consecutive steps. Rank 0 prints.
"""

import argparse
import copy
import itertools
import statistics
import tempfile
import time

from adamole_bench.base.paths import offline_defaults
from adamole_bench.harness.model.loading import load_base_model
from adamole_bench.harness.settings.config import TrainConfig
from adamole_bench.harness.train import distributed
from adamole_bench.harness.train.data import EncodedExamples
from adamole_bench.harness.train.loop import set_seed, train
from adamole_bench.harness.train.rank_checkpoints import trial_checkpoint
from adamole_bench.methods.registry import build_method
from adamole_bench.tasks.sources import load_task


def step_seconds(tiny, examples, config: TrainConfig, checkpointed: bool) -> float:
    """Median wall seconds between consecutive optimizer steps (the first two and the last left out)."""
    method = build_method("lora", {"dropout": 0.1})
    set_seed(0)
    model = method.apply(copy.deepcopy(tiny.model))
    ctx = distributed.context()
    stamps: list[float] = []
    with tempfile.TemporaryDirectory() as folder:
        config.checkpoint_dir = ctx.broadcast(folder)  # one folder for all ranks (rank 0's)
        checkpoint = trial_checkpoint("0123456789ab", 0, config, ctx) if checkpointed else None
        train(
            model,
            method,
            examples,
            config,
            0,
            tiny.tokenizer.pad_token_id,
            checkpoint=checkpoint,
            on_step=lambda step, _: stamps.append(time.perf_counter()),
        )
        ctx.everyone(True)  # every rank done with the folder before rank 0 removes it
    return statistics.median(b - a for a, b in itertools.pairwise(stamps[1:-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--calls", type=int, default=2000)
    args = parser.parse_args()
    offline_defaults()
    ctx = distributed.context()
    assert ctx.enabled, "run it under torchrun --nproc_per_node 2"

    calls = []
    for _ in range(args.calls):
        started = time.perf_counter()
        ctx.stop_signal(None)
        calls.append(time.perf_counter() - started)

    tiny = load_base_model("tiny-llama")
    task = load_task("fruit_or_color")
    examples = EncodedExamples([(task.spec, task.splits["train"][:64])], tiny.tokenizer, 64, "answer", "letter")
    config = TrainConfig(max_steps=args.steps, batch_size=4, warmup_steps=0, lr=1e-3, checkpoint_every=10**9)
    times: dict[str, list[float]] = {"without": [], "with": []}
    for _ in range(args.rounds):
        for name in times:
            times[name].append(step_seconds(tiny, examples, config, checkpointed=name == "with"))
    if ctx.is_main:
        without, with_ = statistics.median(times["without"]), statistics.median(times["with"])
        print(f"stop-signal all-reduce: {statistics.median(calls) * 1e6:.0f} µs (median of {args.calls}, {ctx.world_size} ranks, gloo)")
        print(
            f"optimizer step: {without * 1e3:.1f} ms without the all-reduce, {with_ * 1e3:.1f} ms with it ({with_ / without:.3f}×; medians of {args.rounds} rounds)"
        )
        print("per round (ms without / with): " + ", ".join(f"{a * 1e3:.1f} / {b * 1e3:.1f}" for a, b in zip(times["without"], times["with"])))


if __name__ == "__main__":
    main()
