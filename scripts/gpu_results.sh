#!/usr/bin/env bash
# Issue 3's GPU results, one run after another on one GPU (processes sharing a GPU are time-sliced: far slower),
# each with its own training time budget, then each checkpoint evaluated.
#   bash scripts/gpu_results.sh OUT_DIR SUITE [BUDGET_SCALE]      SUITE: prosqa | mult
#   ONLY="prosqa_pause mult5_no_cot" bash scripts/gpu_results.sh OUT all    # only the named runs
#   SMOKE=1 bash scripts/gpu_results.sh /tmp/smoke prosqa 0.02   # tiny sizes on the CPU, to check the plumbing
#   RESUME=1 ONLY=... bash scripts/gpu_results.sh OUT all        # continue the named runs from their checkpoints in OUT
#                                                                 # (the budget counts again, per command)
set -uo pipefail
out=${1:?out dir}; suite=${2:?prosqa or mult}; scale=${3:-1}; valid=${VALID:-.devdata/prosqa_valid.json}
mkdir -p "$out"
export PYTHONUNBUFFERED=1

model="--dim 256 --depth 6 --heads 8 --dim-head 32 --num-residual-streams 1 --batch-size 128 --lr 1e-3 --bf16"
device=cuda
if [ "${SMOKE:-0}" = 1 ]; then
  model="--dim 32 --depth 1 --heads 2 --dim-head 16 --batch-size 32"; device=cpu
fi

run() {  # name, seconds of training, then train_toy.py arguments
  if [ -n "${ONLY:-}" ] && [[ " $ONLY " != *" $1 "* ]]; then return; fi
  local name=$1 seconds; seconds=$(python -c "print(int($2 * $scale) + 1)"); shift 2
  if [ "${SMOKE:-0}" = 1 ]; then  # CUDA graphs need a GPU; the smoke run checks the rest of the plumbing
    local args=(); for a in "$@"; do [ "$a" != --cuda-graphs ] && args+=("$a"); done; set -- "${args[@]}"
  fi
  python train_toy.py --device $device --time-budget "$seconds" --out "$out/$name" $model "$@" ${RESUME:+--resume} 2>/dev/null | grep '^{' > "$out/$name.log"
  echo "{\"run\": \"$name\", \"budget_s\": $seconds, \"train_toy\": $(tail -1 "$out/$name.log")}" | tee -a "$out/results.jsonl"
  if [[ $name == prosqa* ]]; then
    echo "{\"run\": \"$name\", \"valid\": $(python -m coconut_pytorch.evaluate --checkpoint "$out/$name/checkpoint.pt" --data "$valid" --device $device | tail -1)}" | tee -a "$out/results.jsonl"
  fi
}

if [ "$suite" = prosqa ] || [ "$suite" = all ]; then
  data="--task prosqa --max-latent-stage 6 --train-size 20000 --eval-size 500 --epochs-per-stage 2 --final-epochs 4"
  run prosqa_coconut 270 $data --method coconut
  run prosqa_cot     90  $data --method cot
  run prosqa_no_cot  50  $data --method no_cot
  run prosqa_pause   60  $data --method pause
  # does language CoT learn ProsQA from scratch given most of the 8-minute budget? (the 90 s run did not)
  run prosqa_cot_long 420 $data --method cot
  # the long cot run memorised its fixed 20,000 examples: the same budget with a new generated set every epoch
  run prosqa_coconut_fresh 440 $data --method coconut --fresh-data
  run prosqa_cot_fresh     400 $data --method cot --fresh-data
  # steps as whole breadth-first layers (same questions and answers)
  frontier=(--fresh-data --task-kwargs '{"steps": "frontier"}')
  run prosqa_coconut_frontier 440 $data --method coconut "${frontier[@]}"
  run prosqa_cot_frontier     400 $data --method cot "${frontier[@]}"
  # the same with a batch of 256 (twice the examples per second, half the optimizer steps)
  run prosqa_coconut_frontier_b256 440 $data --method coconut "${frontier[@]}" --batch-size 256 --lr 1.5e-3
  # one epoch per stage and ten at the last stage (the language stages' token accuracy barely moved in two)
  run prosqa_coconut_frontier_short_stages 440 $data --method coconut "${frontier[@]}" --epochs-per-stage 1 --final-epochs 10
  # the ceiling with more time at the last stage: twelve epochs there, over two commands (the second with RESUME=1)
  run prosqa_coconut_frontier_long 500 $data --method coconut "${frontier[@]}" --final-epochs 12
  # not yet run: how often the recipe breaks through (one of three runs did), on CUDA graphs (under 6 minutes each)
  run prosqa_coconut_frontier_seed1 440 $data --method coconut "${frontier[@]}" --seed 1 --cuda-graphs
  run prosqa_coconut_frontier_seed2 440 $data --method coconut "${frontier[@]}" --seed 2 --cuda-graphs
  # the same recipe with CUDA-graph training steps (sixth session): several times the epochs in the same budget,
  # spent at the last stage
  run prosqa_coconut_frontier_graphs 440 $data --method coconut "${frontier[@]}" --cuda-graphs --final-epochs 24
  # ... with a tenth of the examples at a random earlier stage, so the thoughts keep some frontier supervision
  run prosqa_coconut_frontier_graphs_uniform 440 $data --method coconut "${frontier[@]}" --cuda-graphs --final-epochs 24 --uniform-prob 0.1
  # not yet run: frontier steps that name the first-stated qualifying parent, not a random one (no unlearnable
  # tokens in the language stages)
  run prosqa_coconut_frontier_first 440 $data --method coconut --fresh-data --task-kwargs '{"steps": "frontier_first"}' --cuda-graphs --final-epochs 24
  # seventh session: each thought also trained to put its next-token distribution on the words of the frontier it
  # replaced (--thought-loss), so the thoughts get a direct signal at every stage, the last one included
  run prosqa_coconut_frontier_thought_loss 440 $data --method coconut "${frontier[@]}" --cuda-graphs --final-epochs 24 --thought-loss 1
  run prosqa_coconut_frontier_thought_loss_seed1 440 $data --method coconut "${frontier[@]}" --cuda-graphs --final-epochs 24 --thought-loss 1 --seed 1
  run prosqa_coconut_frontier_thought_loss_seed2 440 $data --method coconut "${frontier[@]}" --cuda-graphs --final-epochs 24 --thought-loss 1 --seed 2
  # ablations of that recipe (400 s budgets): the paper's proof-chain steps instead of frontiers, and no curriculum
  run prosqa_coconut_chain_thought_loss 400 $data --method coconut --fresh-data --cuda-graphs --final-epochs 24 --thought-loss 1
  run prosqa_coconut_no_curriculum_thought_loss 400 $data --method coconut_no_curriculum "${frontier[@]}" --cuda-graphs --final-epochs 24 --thought-loss 1
fi
if [ "$suite" = mult ] || [ "$suite" = all ]; then
  for digits in 4 5; do
    data="--task multiplication --task-kwargs {\"num_digits_a\":$digits,\"num_digits_b\":$digits} --c-thought 2 --train-size 40000 --eval-size 1000 --epochs-per-stage 1 --final-epochs 3"
    run mult${digits}_coconut 150 $data --method coconut
    run mult${digits}_cot     50  $data --method cot
    run mult${digits}_no_cot  40  $data --method no_cot
    # a longer coconut run, so the curriculum finishes: the shorter one stopped at stage 3
    run mult${digits}_coconut_long 260 $data --method coconut
    # not yet run: stages of 8 language tokens instead of whole steps, on CUDA graphs; without thoughts this is
    # iCoT's stepwise internalization (with its removal smoothing), with coconut 2 thoughts take the place of each
    # 8 tokens
    tokens=(--tokens-per-stage 8 --removal-smoothing 4 --epochs-per-stage 3 --final-epochs 10 --fresh-data --cuda-graphs)
    run mult${digits}_icot         540 $data --method no_thoughts "${tokens[@]}"
    run mult${digits}_coconut_tokens 540 $data --method coconut "${tokens[@]}"
    # seventh session: the same with each thought aligned with its 4 of the 8 tokens (--thought-loss), and two
    # epochs a stage so that the last stage gets more of the budget
    run mult${digits}_coconut_tokens_thought_loss 470 $data --method coconut "${tokens[@]}" --epochs-per-stage 2 --thought-loss 1
    # ... which finished in half its budget with the last stage still improving: 3 epochs a stage and 30 at the last
    run mult${digits}_coconut_tokens_thought_loss_long 500 $data --method coconut "${tokens[@]}" --final-epochs 30 --thought-loss 1
    # eighth session: one thought per language token (8 tokens a stage, 8 thoughts in their place), each aligned with
    # the one token it replaced; 20,000 new examples an epoch. 5x5 has 75 language tokens (10 stages, 80 thoughts at
    # the end): one epoch a stage, and 600 s over two commands (the second with RESUME=1)
    token_thoughts=(--tokens-per-stage 8 --c-thought 8 --thought-loss 1 --fresh-data --cuda-graphs --train-size 20000 --final-epochs 30)
    run mult${digits}_coconut_token_thoughts 490 $data --method coconut "${token_thoughts[@]}" --epochs-per-stage 2
    run mult${digits}_coconut_token_thoughts_1eps 290 $data --method coconut "${token_thoughts[@]}" --epochs-per-stage 1
    # ... one epoch a stage, and a schedule that fits 10 minutes and ends with the lr decaying linearly to 0 (the
    # constant-lr runs sat at 0.99-0.998 token accuracy, under 99% exact); 5x5 over two commands (the second RESUME=1)
    if [ $digits = 4 ]; then decay=(--final-epochs 14 --lr-decay-epochs 5); budget=520
    else decay=(--final-epochs 5 --lr-decay-epochs 3); budget=300; fi
    run mult${digits}_coconut_token_thoughts_decay $budget $data --method coconut "${token_thoughts[@]}" --epochs-per-stage 1 "${decay[@]}"
    run mult${digits}_coconut_token_thoughts_decay_seed1 $budget $data --method coconut "${token_thoughts[@]}" --epochs-per-stage 1 "${decay[@]}" --seed 1
    # ninth session: the step is latency-bound (H100, 5x5 at 80 thoughts: 342 ms at batch 128, 392 ms at 256), so a
    # batch of 256 takes 1.7x the examples a second; and 15-token stages (5x5: 75 tokens = 5 stages of 15 thoughts,
    # none left without a token to match) reach the last stage in about a quarter of the time of 8-token ones
    if [ $digits = 5 ]; then
      wide=(--tokens-per-stage 15 --c-thought 15 --thought-loss 1 --fresh-data --cuda-graphs --train-size 20000 --epochs-per-stage 1 --batch-size 256 --lr 1.5e-3)
      run mult5_coconut_token_thoughts_r15_b256 560 $data --method coconut "${wide[@]}" --final-epochs 14 --lr-decay-epochs 5
      # ... whose first stages stayed under 0.84 token accuracy and whose last stage diverged in the decay (epoch
      # 16, loss 0.09 -> 8.8): 8-token stages again, a batch of 256 at the lr of 1e-3
      run mult5_coconut_token_thoughts_b256 540 $data --method coconut "${token_thoughts[@]}" --epochs-per-stage 1 --batch-size 256 --final-epochs 9 --lr-decay-epochs 4
      run mult5_coconut_token_thoughts_b256_seed1 540 $data --method coconut "${token_thoughts[@]}" --epochs-per-stage 1 --batch-size 256 --final-epochs 9 --lr-decay-epochs 4 --seed 1
      run mult5_coconut_token_thoughts_b256_seed2 540 $data --method coconut "${token_thoughts[@]}" --epochs-per-stage 1 --batch-size 256 --final-epochs 9 --lr-decay-epochs 4 --seed 2
      # ablation: the same without the thought alignment loss
      run mult5_coconut_token_thoughts_b256_no_thought_loss 540 $data --method coconut "${token_thoughts[@]}" --epochs-per-stage 1 --batch-size 256 --final-epochs 9 --lr-decay-epochs 4 --thought-loss 0
    fi
  done
fi
