#!/usr/bin/env bash
# What only a CUDA GPU can measure, in at most 8 minutes, into one results file (docs/performance.md):
#   1. the tests that need CUDA (pytest -m cuda: the plan against the allocator's peak, fp32/bf16/fp16);
#   2. `bench` for lora, mole and adamole in fp32, bf16 and fp16 (step time, memory, ratios to LoRA);
#   3. the mission command on SmolLM2 (`run --methods adamole,mole --tasks copa,boolq`), timed;
#   4. `plan` beside the measured training peak of every method (SmolLM2, bf16).
# Usage: scripts/gpu_check.sh [--dry-run] [OUTPUT_DIR]   (PYTHON=... picks the interpreter, default .venv/bin/python)
# Writes OUTPUT_DIR/results-gpu-<UTC date>.json (and .md), one log per step. Without CUDA it stops with
# one line (exit 2); --dry-run lists the steps and writes the results file with every step "skipped".
set -uo pipefail
cd "$(dirname "$0")/.."
DRY_RUN=0
if [[ "${1:-}" == "--dry-run" ]]; then DRY_RUN=1; shift; fi
STAMP=$(date -u +%Y%m%d-%H%M%S)
OUT=${1:-gpu-check-$STAMP}
PY=${PYTHON:-.venv/bin/python}
export ADAMOLE_BENCH_RUNS="$OUT/runs" PYTHONUNBUFFERED=1
mkdir -p "$OUT"

if [[ $DRY_RUN == 0 ]] && ! "$PY" -c "import sys, torch; sys.exit(not torch.cuda.is_available())"; then
  echo "gpu_check: CUDA is not available here (torch.cuda.is_available() is False); run it on a CUDA machine, or pass --dry-run to check the wiring" >&2
  exit 2
fi

# name | seconds allowed | command (8 minutes in all)
STEPS=(
  "cuda_tests|90|$PY -m pytest -q -m cuda tests/test_cuda.py -p no:cacheprovider"
  "bench|120|$PY -m adamole_bench.cli bench --methods lora,mole,adamole --model smollm2-135m --device cuda --precisions fp32,bf16,fp16 --steps 5 --eval-task none --output $OUT/bench.json"
  "mission|210|$PY -m adamole_bench.cli run --methods adamole,mole --tasks copa,boolq --device cuda"
  "plan|60|$PY -c 'import json, sys; from adamole_bench.harness.settings.config import load_config; from adamole_bench.harness.plan.measure import plan_against_measured; json.dump(plan_against_measured(load_config(None, [\"model=smollm2-135m\", \"device=cuda\", \"precision=bf16\", \"methods=[lora,mole,adamole,soft-moa,sparse-moa]\"])), open(sys.argv[1], \"w\"), indent=2)' $OUT/plan.json"
)

RECORDS=()
for step in "${STEPS[@]}"; do
  IFS='|' read -r name limit command <<<"$step"
  if [[ $DRY_RUN == 1 ]]; then
    echo "[dry run] $name (≤ ${limit} s): $command"
    RECORDS+=("$name|skipped|0|$limit")
    continue
  fi
  echo "== $name (≤ ${limit} s)"
  started=$SECONDS
  timeout --signal=TERM --kill-after=10 "$limit" bash -c "$command" >"$OUT/$name.log" 2>&1
  rc=$?
  RECORDS+=("$name|$rc|$((SECONDS - started))|$limit")
  tail -n 20 "$OUT/$name.log"
done

"$PY" - "$OUT" "$STAMP" "$DRY_RUN" "${RECORDS[@]}" <<'PY'
"""Gather every step's exit code, time and outputs into results-gpu-<date>.json and a Markdown summary."""
import json, platform, subprocess, sys
from pathlib import Path

out, stamp, dry_run, records = Path(sys.argv[1]), sys.argv[2], sys.argv[3] == "1", sys.argv[4:]
def read(name):
    path = out / name
    return json.loads(path.read_text()) if path.exists() else None
def tail(name):
    path = out / f"{name}.log"
    return path.read_text()[-4000:] if path.exists() else ""
try:
    gpu = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"], capture_output=True, text=True).stdout.strip()
except OSError:
    gpu = None
steps = []
for record in records:
    name, rc, seconds, limit = record.split("|")
    status = "skipped" if rc == "skipped" else ("passed" if rc == "0" else ("timed out" if rc in ("124", "137") else "failed"))
    steps.append({"name": name, "status": status, "exit_code": None if rc == "skipped" else int(rc), "seconds": int(seconds), "limit_seconds": int(limit), "log_tail": tail(name)})
results = {"date": stamp, "dry_run": dry_run, "host": platform.node(), "gpu": gpu, "steps": steps, "bench": read("bench.json"), "plan_vs_measured": read("plan.json")}
target = out / f"results-gpu-{stamp}.json"
target.write_text(json.dumps(results, indent=2))
lines = [f"# GPU check {stamp}" + (" (dry run)" if dry_run else ""), "", f"GPU: {gpu}", "", "| step | status | seconds | limit |", "|---|---|---:|---:|"]
lines += [f"| {s['name']} | {s['status']} | {s['seconds']} | {s['limit_seconds']} |" for s in steps]
if results["plan_vs_measured"]:
    lines += ["", "| method | plan MiB | measured MiB | ratio |", "|---|---:|---:|---:|"]
    lines += [f"| {r['method']} | {r['predicted_bytes'] / 2**20:.0f} | {r['measured_bytes'] / 2**20:.0f} | {r['ratio']:.3f} |" for r in results["plan_vs_measured"]]
target.with_suffix(".md").write_text("\n".join(lines) + "\n")
print(f"results → {target}")
sys.exit(0 if all(s["status"] in ("passed", "skipped") for s in steps) else 1)
PY
