#!/usr/bin/env bash
# Issue 21's speed targets on one GPU, each part with coconut-pytorch 0.0.32 (--reference) or the ceilings measured
# in the same process, one part after another (never two processes on the GPU at once):
#   bash scripts/speed_targets.sh OUT_DIR REFERENCE_DIR [PARTS]
# PARTS (default "eager compiled"):
#   eager     A, A1 and B launched eagerly (the step of a custom training loop), generation with graph-captured steps
#             and with compiled steps (compile_steps=True) for each; the reference's step and generation beside each
#   compiled  A compiled whole (CUDA graphs) in a fresh process with an empty inductor cache (the cold start a user
#             meets first), then again in a new process over the cache the first one left (every later run)
#   compiled1 A1 compiled whole beside the ceilings compiled the same way (x (ii) is the target's ratio)
#   profileA, profileB   where the eager step's time goes (benchmarks/profile_step.py: host and device time, by op and module)
# REFERENCE_DIR: pip install --no-deps --target DIR coconut-pytorch==0.0.32 rotary-embedding-torch
# Each part writes OUT_DIR/<part>.json (benchmarks/benchmark.py --out) and OUT_DIR/<part>.log.
set -uo pipefail
out=${1:?out dir}; reference=${2:?reference dir}; parts=${3:-eager compiled}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
bench="python benchmarks/benchmark.py --steps 10 --warmup 3"
status=0     # a failed part does not stop the others; the script's exit status says that one failed

for part in $parts; do
  case $part in
    eager)
      $bench --configs A,A1,B --no-compile --reference "$reference" --gen-compile --no-hc-bench --out "$out/eager.json" 2>&1 | tee "$out/eager.log" || status=1 ;;
    compiled)
      cache=$(mktemp -d)
      TORCHINDUCTOR_CACHE_DIR=$cache $bench --configs A --no-gen --no-ceilings --no-hc-bench --out "$out/compiled_cold.json" 2>&1 | tee "$out/compiled_cold.log" || status=1
      TORCHINDUCTOR_CACHE_DIR=$cache $bench --configs A --no-gen --no-ceilings --no-hc-bench --out "$out/compiled_warm.json" 2>&1 | tee "$out/compiled_warm.log" || status=1
      rm -rf "$cache" ;;
    compiled1)
      $bench --configs A1 --no-gen --no-hc-bench --out "$out/compiled1.json" 2>&1 | tee "$out/compiled1.log" || status=1 ;;
    profileA|profileB)
      python benchmarks/profile_step.py --config ${part#profile} --rows 30 2>&1 | tee "$out/$part.txt" || status=1 ;;
    *) echo "unknown part $part (eager, compiled, compiled1, profileA, profileB)"; exit 2 ;;
  esac
done
exit $status
