#!/usr/bin/env bash
# Issue 3's GPU results: every run of the table in parallel on one GPU, each with a training time budget,
# then each checkpoint evaluated. Usage (repo root):  bash scripts/gpu_results.sh OUT_DIR [BUDGET_SECONDS] [PROSQA_VALID]
#   SMOKE=1 bash scripts/gpu_results.sh /tmp/smoke 20     # tiny sizes on the CPU, to check the plumbing
set -uo pipefail
out=${1:?out dir}; budget=${2:-420}; valid=${3:-.devdata/prosqa_valid.json}
mkdir -p "$out"
export OMP_NUM_THREADS=1 PYTHONUNBUFFERED=1

if [ "${SMOKE:-0}" = 1 ]; then
  device=cpu; size="--dim 32 --depth 1 --heads 2 --dim-head 16 --train-size 64 --eval-size 16 --batch-size 32 --epochs-per-stage 1 --final-epochs 1"
  prosqa_size="$size"; mult_size="$size"
else
  device=cuda
  prosqa_size="--dim 256 --depth 6 --heads 8 --dim-head 32 --num-residual-streams 2 --train-size 20000 --eval-size 500 --batch-size 128 --lr 1e-3 --epochs-per-stage 2 --final-epochs 6 --bf16"
  mult_size="--dim 256 --depth 6 --heads 8 --dim-head 32 --num-residual-streams 2 --train-size 40000 --eval-size 1000 --batch-size 128 --lr 1e-3 --epochs-per-stage 2 --final-epochs 6 --bf16"
fi

run() {  # name, then train_toy.py arguments
  local name=$1; shift
  python train_toy.py --device $device --time-budget "$budget" --out "$out/$name" "$@" > "$out/$name.log" 2>&1
}

for method in coconut cot no_cot pause; do
  run prosqa_$method --task prosqa --method $method --max-latent-stage 6 $prosqa_size &
done
for digits in 4 5; do
  for method in coconut cot no_cot; do
    run mult${digits}_$method --task multiplication --task-kwargs "{\"num_digits_a\": $digits, \"num_digits_b\": $digits}" --method $method --c-thought 2 $mult_size &
  done
done
wait

# one JSON line per run: train_toy's own held-out result, and ProsQA's valid split through the evaluate command
for log in "$out"/*.log; do
  name=$(basename "$log" .log)
  echo "{\"run\": \"$name\", \"train_toy\": $(grep '^{"finished' "$log" | tail -1 || echo null)}" >> "$out/results.jsonl"
  if [[ $name == prosqa_* ]]; then
    echo "{\"run\": \"$name\", \"valid\": $(python -m coconut_pytorch.evaluate --checkpoint "$out/$name/checkpoint.pt" --data "$valid" --device $device | tail -1)}" >> "$out/results.jsonl"
  fi
done
cat "$out/results.jsonl"
