#!/usr/bin/env bash
# Issue 19's ProsQA runs: Coconut against the supervised pause control (pause_as_thought with the thought loss) and
# the unsupervised one (the same without it), each on the README's ProsQA recipe (recipes/prosqa.yaml), all at once
# on one GPU, and resumable across device commands of limited length:
#
#   bash scripts/prosqa_controls.sh train OUT SECONDS [NAME ...]   # train (or --resume) each unfinished run for about SECONDS
#   bash scripts/prosqa_controls.sh start OUT SECONDS [NAME ...]   # the same in the background (setsid), returning at once:
#                                                                  # the runs outlive the device command that started them
#   bash scripts/prosqa_controls.sh watch OUT SECONDS              # wait up to SECONDS for the started runs (printing their
#                                                                  # progress), resuming any that died before its time was up
#   bash scripts/prosqa_controls.sh eval OUT [NAME ...]            # valid with 0 thoughts; generated depths 6-8 at 6-8 thoughts
#   bash scripts/prosqa_controls.sh pack OUT DEST [NAME ...]       # logs, metrics and evaluations as DEST/runs.tar.gz;
#                                                                  # each (named) run's weights in bf16 (model only) as DEST/NAME.pt
#
# VALID (default .devdata/valid.json) is the paper's ProsQA validation split: each run's end-of-command accuracy is
# on it (--eval-file). Processes sharing a GPU are time-sliced; where `nvidia-cuda-mps-control` exists, `train`
# starts CUDA MPS for the command (and stops it after), so that the small models' kernels run side by side.
set -uo pipefail
mode=${1:?train, start, watch, eval or pack}; out=${2:?out dir}; shift 2
valid=${VALID:-.devdata/valid.json}
export PYTHONUNBUFFERED=1

declare -A arguments=(
  [coconut_s0]="--method coconut --seed 0"
  [coconut_s1]="--method coconut --seed 1"
  [pause_sup_s0]="--method pause_as_thought --seed 0"
  [pause_sup_s1]="--method pause_as_thought --seed 1"
  [pause_unsup_s0]="--method pause_as_thought --thought-loss 0 --seed 0"
  # issue 20's options, each beside the thought loss and paired with coconut_s1 (same seed, so the same data)
  [halt_s1]="--method coconut --halt-loss 1 --seed 1"
  [align_mse_s1]="--method coconut --align-mse 1 --seed 1"
  [align_cos_s1]="--method coconut --align-cosine 1 --seed 1"
  [rms_s1]="--method coconut --thought-rms-match --seed 1"
  [mix_s1]="--method coconut --mix-start 0.5 --mix-epochs 2 --seed 1"
)
all="coconut_s0 coconut_s1 pause_sup_s0 pause_sup_s1 pause_unsup_s0"
# EXTRA: arguments every run gets (e.g. --eval-every 3 for accuracy curves, so that runs compare at equal epochs)
extra=${EXTRA:-}
mkdir -p "$out"

finished() { [ -f "$out/$1.log" ] && grep '^{' "$out/$1.log" | tail -1 | grep -q '"finished": true'; }
# the command's last record is its result: finished, or stopped by its time budget (or diverged)
ended() { [ -f "$out/$1.log" ] && grep '^{' "$out/$1.log" | tail -1 | grep -q '"finished": '; }
running() { [ -f "$out/$1.pid" ] && kill -0 "$(cat "$out/$1.pid")" 2> /dev/null; }

# runs started by `start` and resumed by `watch` talk to the same MPS daemon
export CUDA_MPS_PIPE_DIRECTORY=/tmp/mps-pipe CUDA_MPS_LOG_DIRECTORY=/tmp/mps-log
mps=0
start_mps() {
  if command -v nvidia-cuda-mps-control > /dev/null; then
    mkdir -p $CUDA_MPS_PIPE_DIRECTORY $CUDA_MPS_LOG_DIRECTORY
    nvidia-cuda-mps-control -d 2> /dev/null && mps=1
  fi
  echo "MPS: $mps"
}

# one run in its own session, so that it outlives the command; its budget ends at the deadline
launch() {
  local name=$1 seconds=$2 resume=()
  [ -f "$out/$name/checkpoint.pt" ] && resume=(--resume)
  echo "$name: python train_toy.py --config recipes/prosqa.yaml ${arguments[$name]} $extra --eval-file $valid --time-budget $seconds --out $out/$name ${resume[*]}"
  OMP_NUM_THREADS=2 setsid nohup python train_toy.py --config recipes/prosqa.yaml ${arguments[$name]} $extra --eval-file "$valid" \
    --time-budget "$seconds" --out "$out/$name" "${resume[@]}" >> "$out/$name.log" 2>> "$out/$name.err" < /dev/null &
  echo $! > "$out/$name.pid"
}

progress() { for name in $(cat "$out/started"); do echo "$name: $(grep '^{' "$out/$name.log" 2> /dev/null | tail -1 | cut -c1-220)"; done; }

case $mode in
train)
  seconds=${1:?seconds}; shift; names=${*:-$all}
  start_mps
  (command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv,noheader -l 20 >> "$out/gpu_use.csv") &
  smi=$!
  for name in $names; do
    if finished "$name"; then echo "$name: finished"; continue; fi
    resume=(); [ -f "$out/$name/checkpoint.pt" ] && resume=(--resume)
    echo "$name: python train_toy.py --config recipes/prosqa.yaml ${arguments[$name]} --eval-file $valid --time-budget $seconds --out $out/$name ${resume[*]}"
    python train_toy.py --config recipes/prosqa.yaml ${arguments[$name]} $extra --eval-file "$valid" --time-budget "$seconds" \
      --out "$out/$name" "${resume[@]}" >> "$out/$name.log" 2>> "$out/$name.err" &
  done
  wait $(jobs -p | grep -v "^$smi$")
  kill $smi 2> /dev/null
  [ $mps = 1 ] && echo quit | nvidia-cuda-mps-control
  for name in $names; do echo "$name: $(grep '^{' "$out/$name.log" | tail -1)"; done
  ;;
start)
  seconds=${1:?seconds}; shift; names=${*:-$all}
  start_mps
  command -v nvidia-smi > /dev/null && setsid nohup nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used \
    --format=csv,noheader -l 20 >> "$out/gpu_use.csv" 2> /dev/null < /dev/null &
  echo $(( $(date +%s) + seconds )) > "$out/deadline"
  echo "$names" > "$out/started"
  for name in $names; do
    if finished "$name"; then echo "$name: finished"; continue; fi
    launch "$name" "$seconds"
  done
  ;;
watch)
  seconds=${1:?seconds}; until=$(( $(date +%s) + seconds )); deadline=$(cat "$out/deadline")
  while [ "$(date +%s)" -lt $until ]; do
    alive=0
    for name in $(cat "$out/started"); do
      if running "$name"; then alive=1; continue; fi
      ended "$name" && continue
      # died (out of memory, say) before its budget ran out: on from its last epoch, for the time that is left
      left=$(( deadline - $(date +%s) ))
      if [ $left -gt 120 ]; then echo "$name died: $(tail -2 "$out/$name.err" | cut -c1-200); resuming for $left s"; launch "$name" $left; alive=1; fi
    done
    [ $alive = 0 ] && break
    sleep 15
  done
  progress
  nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader 2> /dev/null
  ;;
eval)
  names=${*:-$all}
  for name in $names; do
    ckpt=$out/$name/checkpoint.pt
    echo "$name, valid with 0 thoughts: $(python -m coconut_pytorch.evaluate --checkpoint "$ckpt" --data "$valid" --num-thoughts 0 | tail -1)" \
      | tee -a "$out/$name.eval"
    python -m coconut_pytorch.depth_eval --checkpoint "$ckpt" --depths 6 7 8 --num-thoughts 6 7 8 --size 500 \
      --out "$out/$name.depth.json" | tee -a "$out/$name.eval"
  done
  ;;
pack)
  dest=${1:?dest dir}; shift; mkdir -p "$dest"
  tar -czf "$dest/runs.tar.gz" --exclude='*.pt' --exclude='tensorboard' -C "$out" .
  # the weights of the runs named (default: all; 7 runs' copies would pass what a device command returns, 64 MiB)
  for name in ${*:-$(ls "$out")}; do
    ckpt=$out/$name/checkpoint.pt; [ -f "$ckpt" ] || continue
    python -c "
import sys, torch
state = torch.load(sys.argv[1], weights_only = True)
state = {key: state[key] for key in ('config', 'model', 'tokenizer', 'curriculum', 'inference', 'history', 'backbone') if key in state}
state['model'] = {key: value.to(torch.bfloat16) if value.is_floating_point() else value for key, value in state['model'].items()}
torch.save(state, sys.argv[2])" "$ckpt" "$dest/$name.pt"
  done
  ls -la "$dest"
  ;;
*) echo "mode: train, start, watch, eval or pack" >&2; exit 2 ;;
esac
