#!/usr/bin/env bash
# HISTORY: the settings these commands carry were chosen by their score on the old test draw (issue 17.11);
# benchmarks/posttrain_heldout.sh reruns the chosen path under the held-out protocol (val chooses, test once).
# Issue 8's pipeline end to end on 2 CPU cores, from nothing to an RL-tuned chat model:
#   pretrain (Tiny Shakespeare) -> SFT on generated questions ("What is 17 plus 26?" -> "43")
#   -> reward model (right answer vs near miss) -> GRPO (exact-match reward) / PPO (learned reward) / DPO
# then greedy exact match of every model on the same 500 held-out questions (test split, eval seed 1000).
#   benchmarks/posttrain.sh            (results in benchmarks/results/posttrain-*)
# STAGES="sft rm grpo ppo dpo eval" runs a subset; the runs go to runs/posttrain/.
# The figures in benchmarks/RESULTS.md came from these commands run one by one (the base run there
# was stopped at step 486 with Ctrl-C and its best checkpoint, step 250, was finetuned; PPO was
# stopped at step 14 of 30 once its accuracy had fallen).
set -euo pipefail
cd "$(dirname "$0")/.."
QUILL="${QUILL:-.venv/bin/quill}"
RUNS="${POSTTRAIN_RUNS:-runs/posttrain}"
OUT="${POSTTRAIN_OUT:-benchmarks/results}"
STAGES="${STAGES:-base sft rm grpo ppo dpo eval}"
TASK=(--ops + --digits 2)
mkdir -p "$OUT" "$RUNS"
stage() { [[ " $STAGES " == *" $1 "* ]]; }
timed() {  # timed NAME CMD...: run, tee the log, record the wall time
  local name=$1; shift
  local start; start=$(date +%s)
  "$@" 2>&1 | tee "$OUT/posttrain-$name.log"
  echo "wall_s=$(( $(date +%s) - start ))" | tee -a "$OUT/posttrain-$name.log"
}
stage base && timed base "$QUILL" train --preset cpu-small --max-iters 500 --out-dir "$RUNS/base" --overwrite --no-progress
# SFT in two legs (the second from the first's best checkpoint), so the first leg's model is also on record.
stage sft && timed sft1 "$QUILL" sft "$RUNS/base" --chat-ops + --chat-digits 2 --max-iters 800 --lr 2e-3 \
  --eval-interval 200 --out-dir "$RUNS/sft1" --overwrite --no-progress
stage sft && timed sft "$QUILL" sft "$RUNS/sft1" --chat-ops + --chat-digits 2 --max-iters 1500 --lr 1e-3 \
  --warmup-iters 20 --eval-interval 300 --out-dir "$RUNS/sft" --overwrite --no-progress
stage rm && timed rm "$QUILL" reward train "$RUNS/sft" "${TASK[@]}" --val-pairs 500 --steps 800 --eval-interval 100 \
  --out-dir "$RUNS/rm" --overwrite --no-progress
stage grpo && timed grpo "$QUILL" rl grpo "$RUNS/sft" "${TASK[@]}" --steps 40 --prompts-per-step 128 \
  --samples-per-prompt 4 --lr 1e-4 --warmup 5 --minibatches 2 --eval-interval 10 --out-dir "$RUNS/grpo" --overwrite \
  --no-progress
stage ppo && timed ppo "$QUILL" rl ppo "$RUNS/sft" --reward "model:$RUNS/rm" "${TASK[@]}" --steps 30 --warmup 5 \
  --eval-interval 10 --out-dir "$RUNS/ppo" --overwrite --no-progress
stage dpo && timed dpo "$QUILL" dpo "$RUNS/sft" "${TASK[@]}" --steps 200 --lr 5e-5 --eval-interval 50 --val-pairs 500 \
  --out-dir "$RUNS/dpo" --overwrite --no-progress
if stage eval; then
  for run in sft grpo ppo dpo; do
    [ -d "$RUNS/$run" ] || continue
    "$QUILL" task eval "$RUNS/$run" --n 500 --eval-seed 1000 | tee "$OUT/posttrain-$run-eval.txt"
    "$QUILL" task eval "$RUNS/$run" --n 500 --eval-seed 1000 --json > "$OUT/posttrain-$run-eval.json"
  done
fi
