#!/usr/bin/env bash
# Issue 17.11: the post-training path rerun under the held-out protocol, from nothing.
#   Every setting below was fixed before this run (the configurations RESULTS reported earlier);
#   during the run only the val half of the held-out questions is looked at (SFT's best
#   checkpoint, the reward model's held-out pairs, the RL/DPO eval points), and at the end each
#   chosen model is scored ONCE on the test half: `quill task eval RUN --n 500 --eval-seed 1000`.
#
#   pretrain -> SFT 2-digit (2 legs) -> SFT 3-digit (2 legs) -> worked answers (3 legs)
#   -> column addition written out (sftc1) -> GRPO (exact match) | reward model | PPO | DPO
#
#   benchmarks/posttrain_heldout.sh      (about 50 minutes on 2 cores; runs go to runs/heldout/)
# STAGES="..." runs a subset. Logs, metrics, test scores, report card: benchmarks/results/posttrain/heldout-*.
set -euo pipefail
cd "$(dirname "$0")/.."
QUILL="${QUILL:-.venv/bin/quill}"
RUNS="${POSTTRAIN_RUNS:-runs/heldout}"
OUT="${POSTTRAIN_OUT:-benchmarks/results/posttrain}"
STAGES="${STAGES:-base sft2 sft3 sftw sftc post test}"
TASK=(--ops + --digits 3)
SFT=(--chat-ops + --chat-digits 3 --lr 1e-3 --warmup-iters 20 --batch-size 64 --eval-interval 250 --overwrite --no-progress)
mkdir -p "$OUT" "$RUNS"
stage() { [[ " $STAGES " == *" $1 "* ]]; }
timed() {  # timed NAME CMD...: run, keep the log and the metrics, record the wall time
  local name=$1; shift
  local start; start=$(date +%s)
  "$@" > "$OUT/heldout-$name.log" 2>&1
  echo "wall_s=$(( $(date +%s) - start ))" >> "$OUT/heldout-$name.log"
  [ -f "$RUNS/$name/metrics.jsonl" ] && cp "$RUNS/$name/metrics.jsonl" "$OUT/heldout-$name.metrics.jsonl"
  tail -n 3 "$OUT/heldout-$name.log"
}
stage base && timed base "$QUILL" train --preset cpu-small --max-iters 500 --out-dir "$RUNS/base" --overwrite --no-progress
if stage sft2; then  # 2-digit chat questions
  timed sft1 "$QUILL" sft "$RUNS/base" --chat-ops + --chat-digits 2 --max-iters 800 --lr 2e-3 --eval-interval 200 \
    --out-dir "$RUNS/sft1" --overwrite --no-progress
  timed sft "$QUILL" sft "$RUNS/sft1" --chat-ops + --chat-digits 2 --max-iters 1500 --lr 1e-3 --warmup-iters 20 \
    --eval-interval 300 --out-dir "$RUNS/sft" --overwrite --no-progress
fi
if stage sft3; then  # 3-digit questions
  timed sft3d "$QUILL" sft "$RUNS/sft" "${SFT[@]}" --max-iters 1500 --out-dir "$RUNS/sft3d"
  timed sft3d-2 "$QUILL" sft "$RUNS/sft3d" "${SFT[@]}" --max-iters 1500 --out-dir "$RUNS/sft3d-2"
fi
if stage sftw; then  # a share of the demonstrations shows its work: "units first 422, so 224"
  timed sftw1 "$QUILL" sft "$RUNS/sft3d-2" "${SFT[@]}" --chat-worked 0.25 --max-iters 1500 --out-dir "$RUNS/sftw1"
  timed sftw2 "$QUILL" sft "$RUNS/sftw1" "${SFT[@]}" --chat-worked 0.4 --max-iters 1500 --out-dir "$RUNS/sftw2"
  timed sftw3 "$QUILL" sft "$RUNS/sftw2" "${SFT[@]}" --chat-worked 0.4 --max-iters 3000 --out-dir "$RUNS/sftw3"
fi
stage sftc && timed sftc1 "$QUILL" sft "$RUNS/sftw3" "${SFT[@]}" --chat-worked 0.4 --chat-work-style columns \
  --max-iters 2000 --eval-interval 500 --out-dir "$RUNS/sftc1"   # column addition: "3+5=8 4+6=10 9+3+1=13: 1308"
if stage post; then  # two runs at a time, one thread each; PPO needs the reward model, so it pairs with DPO
  export OMP_NUM_THREADS=1
  timed grpo-columns "$QUILL" rl grpo "$RUNS/sftc1" "${TASK[@]}" --steps 60 --prompts-per-step 64 \
    --samples-per-prompt 8 --lr 2e-4 --warmup 10 --eval-interval 10 --out-dir "$RUNS/grpo-columns" --overwrite \
    --no-progress &
  grpo=$!
  timed rm-cross "$QUILL" reward train "$RUNS/sftc1" "${TASK[@]}" --worked 0.5 --work-style columns --cross-style 0.3 \
    --likelihood --policy-pairs 2000 --lr 2e-4 --val-pairs 500 --steps 400 --eval-interval 100 \
    --out-dir "$RUNS/rm-cross" --overwrite --no-progress
  wait "$grpo"  # its exit status: a failed run must stop the script, not be scored from an old folder
  timed ppo-cross "$QUILL" rl ppo "$RUNS/sftc1" --reward "model:$RUNS/rm-cross" "${TASK[@]}" --steps 60 --warmup 5 \
    --lr-decay --prompts-per-step 32 --samples-per-prompt 4 --center-scores --kl-coef 0.3 --kl-target 2.0 \
    --eval-interval 10 --out-dir "$RUNS/ppo-cross" --overwrite --no-progress &
  ppo=$!
  timed dpo "$QUILL" dpo "$RUNS/sftc1" "${TASK[@]}" --worked 0.5 --work-style columns --cross-style 0.3 --steps 200 \
    --lr 5e-5 --eval-interval 50 --val-pairs 500 --out-dir "$RUNS/dpo" --overwrite --no-progress
  wait "$ppo"
  unset OMP_NUM_THREADS
fi
if stage test; then  # the test half, once per chosen model, after every choice above was made
  # Two draws of it, both reported: eval seed 1000 (the protocol's), and eval seed 4242, which shares
  # no more problems with the draw the settings were once tuned on (the old split's seed-1000 draw:
  # 36 of its problems) than chance, where seed 1000 shares 154 (RESULTS, issue 17.11).
  # Each run's last checkpoint is scored, as in the recorded results: DPO saves only that, and sftc1's
  # best val checkpoint is its last; sft3d-2 and sftw3 were continued from their best (RESULTS says
  # which). The RL runs now also keep their best val step (--checkpoint best); this recipe still
  # scores their last until a rerun chooses otherwise.
  for run in sft sft3d-2 sftw2 sftw3 sftc1 grpo-columns ppo-cross dpo; do
    [ -d "$RUNS/$run" ] || continue
    for seed in 1000 4242; do
      "$QUILL" task eval "$RUNS/$run" --n 500 --eval-seed "$seed" --json > "$OUT/heldout-$run-test$seed.json"
      echo "$run seed $seed: $(cat "$OUT/heldout-$run-test$seed.json")"
    done
  done
  # The report card of the last run, PPO: every stage from the pretraining down (the reward model too),
  # each with its config digest, data, steps, wall, val numbers and val/test exact match; the machine.
  "$QUILL" report "$RUNS/ppo-cross" --n 500 --out "$OUT/heldout-report.md"
  echo "report card: $OUT/heldout-report.md"
fi
