#!/usr/bin/env bash
# The README's mission command, timed from a fresh store, natively and as on a CPU without AVX-512/bf16.
#   native-auto: `run --methods adamole,mole --tasks copa,boolq` (precision auto: bf16 where the CPU has it)
#   native-fp32: the same with --precision fp32
#   avx2-fp32:   the same with --precision fp32 and torch limited to AVX2 (ATen kernels, oneDNN, MKL), as
#                an fp32-only CPU runs it; the script checks first that torch reports that capability
# Each variant runs under /usr/bin/time -v in a new folder (its own MLflow store and checkpoints, nothing
# reused), and the script prints wall time, peak resident set, torch's CPU capability, the CPU model and
# its vector/bf16 flags, and the load average before and after (the figure is only worth quoting idle).
# The embedded assets (~/.cache/adamole-bench, from `make setup`) are reused: they are setup, not the run.
# Usage: scripts/measure_mission.sh [VARIANT ...]   (default: native-fp32 avx2-fp32)
#        PYTHON=... picks the interpreter (default .venv/bin/python); OUT=DIR keeps the logs (default a temp dir)
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-$ROOT/.venv/bin/python}
OUT=${OUT:-$(mktemp -d -t mission-XXXXXX)}
VARIANTS=("$@")
[[ ${#VARIANTS[@]} -gt 0 ]] || VARIANTS=(native-fp32 avx2-fp32)
AVX2=(ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2)

if [[ ! -x /usr/bin/time ]]; then
  echo "measure_mission: /usr/bin/time is missing; install GNU time (apt-get install time)" >&2
  exit 2
fi
for variant in "${VARIANTS[@]}"; do
  case $variant in native-auto | native-fp32 | avx2-fp32) ;;
    *) echo "measure_mission: unknown variant '$variant'; choose from native-auto native-fp32 avx2-fp32" >&2; exit 2 ;;
  esac
done
capability() { env "$@" "$PY" -c "import torch; print(torch.backends.cpu.get_cpu_capability())"; }
if [[ " ${VARIANTS[*]} " == *" avx2-fp32 "* ]] && [[ $(capability "${AVX2[@]}") != AVX2 ]]; then
  echo "measure_mission: torch ignores ATEN_CPU_CAPABILITY=avx2 here (reports $(capability "${AVX2[@]}")); the AVX2 emulation would not hold" >&2
  exit 2
fi

echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | xargs) · $(nproc) cores · $(free -g | awk '/Mem:/ {print $2}') GiB"
echo "flags: $(grep -m1 '^flags' /proc/cpuinfo | tr ' ' '\n' | grep -E '^(avx2|avx512f|avx512_bf16|avx512_fp16|amx_bf16|amx_tile)$' | xargs)"
echo "torch: $("$PY" -c 'import torch; print(torch.__version__)') · code: $(git -C "$ROOT" rev-parse --short HEAD)$(git -C "$ROOT" diff --quiet HEAD || echo ' (uncommitted changes)')"
echo "logs: $OUT"
printf '%-12s %-10s %-9s %-12s %-22s %s\n' variant capability wall peak_rss "load before/after" exit
for variant in "${VARIANTS[@]}"; do
  dir=$OUT/$variant
  mkdir -p "$dir"
  environment=(ADAMOLE_BENCH_RUNS="$dir/runs")
  arguments=(run --methods adamole,mole --tasks copa,boolq)
  [[ $variant == native-auto ]] || arguments+=(--precision fp32)
  [[ $variant == avx2-fp32 ]] && environment+=("${AVX2[@]}")
  before=$(cut -d' ' -f1 /proc/loadavg)
  (cd "$dir" && env "${environment[@]}" /usr/bin/time -v -o "$dir/time.txt" "$PY" -m adamole_bench.cli "${arguments[@]}" >"$dir/run.log" 2>&1)
  status=$?
  after=$(cut -d' ' -f1 /proc/loadavg)
  wall=$(sed -n 's/.*Elapsed (wall clock) time (h:mm:ss or m:ss): //p' "$dir/time.txt")
  rss=$(awk '/Maximum resident set size/ {printf "%.0f MB", $NF / 1024}' "$dir/time.txt")
  printf '%-12s %-10s %-9s %-12s %-22s %s\n' "$variant" "$(capability "${environment[@]}")" "$wall" "$rss" "$before / $after" "$status"
  [[ $status == 0 ]] || echo "  $variant failed: see $dir/run.log" >&2
done
