"""The Ray executor against the local one on the same small sweep, behind docs/distributed.md ("Measured").

    python scripts/measure_ray.py [--rounds 2] [--steps 30] [--address HOST:PORT]

Each round runs the same 5-trial tiny-llama sweep (lora and adamole × seeds 0,1, plus the zero-shot
base) as `adamole-bench run` with `--executor local` and with `--executor ray`, one after the other in
fresh stores, and prints each command's wall time and the ratio; the executors alternate which goes
first, so load from other processes hits both alike. Without --address each Ray run starts (and stops)
its own local instance, as `--executor ray` alone does; with it, the runs share a cluster started
once with `ray start`. Every pair is also checked for equal accuracies and losses.
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mlflow.tracking import MlflowClient

SWEEP = ["run", "--model", "tiny-llama", "--tasks", "fruit_or_color", "--methods", "lora,adamole", "--seeds", "0,1",
         "--limit", "32", "save_adapters=false"]  # fmt: skip


def _run(executor: str, store: Path, steps: int, address: str | None) -> float:
    env = {**os.environ, "ADAMOLE_BENCH_RUNS": str(store), "OMP_NUM_THREADS": "1", "RAY_USAGE_STATS_ENABLED": "0"}
    extra = ["--executor", executor] + (["--ray-address", address] if executor == "ray" and address else [])
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "adamole_bench.cli", *SWEEP, "--max-steps", str(steps), *extra], check=False, env=env, capture_output=True, text=True
    )
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"{executor} failed ({done.returncode}):\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
    return seconds


def _results(store: Path) -> dict:
    client = MlflowClient(f"sqlite:///{store / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("adamole-bench")
    assert experiment is not None, f"no trials in {store}"
    runs = client.search_runs([experiment.experiment_id], "tags.kind = 'trial'")
    return {
        (r.data.tags["config_hash"], r.data.tags["seed"]): (r.data.metrics["eval/acc"], repr(r.data.metrics.get("train/final_loss"))) for r in runs
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--address", default=None, help="a running cluster (ray start --head); default: a new local instance per run")
    args = parser.parse_args()
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")), "?")
    flags = Path("/proc/cpuinfo").read_text()
    print(f"CPU: {cpu}, {os.cpu_count()} cores, avx512_bf16={'avx512_bf16' in flags}, amx_bf16={'amx_bf16' in flags}; load {os.getloadavg()[0]:.1f}")
    times: dict[str, list[float]] = {"local": [], "ray": []}
    for round_ in range(args.rounds):
        order = ("local", "ray") if round_ % 2 == 0 else ("ray", "local")
        with tempfile.TemporaryDirectory(prefix="ab-measure-") as root:
            for executor in order:
                times[executor].append(_run(executor, Path(root) / executor, args.steps, args.address))
            same = _results(Path(root) / "local") == _results(Path(root) / "ray")
        local, ray = times["local"][-1], times["ray"][-1]
        print(
            f"round {round_ + 1}: local {local:.1f} s, ray {ray:.1f} s, ray/local {ray / local:.2f}×, results equal: {same}; load {os.getloadavg()[0]:.1f}"
        )
        if not same:
            sys.exit("the executors' results differ")
    ratios = [r / loc for r, loc in zip(times["ray"], times["local"])]
    print(f"median ray/local {statistics.median(ratios):.2f}× over {args.rounds} rounds")


if __name__ == "__main__":
    main()
