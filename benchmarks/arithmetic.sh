#!/usr/bin/env bash
# Issue 7's arithmetic targets, one preset each: train, then greedy exact match on 2,000
# held-out problems drawn with their own eval seed (never the val set used during training).
#   benchmarks/arithmetic.sh [PRESET...]    (default: all four; results in benchmarks/results/)
# Length generalization: the add3-reversed model is also tested on operands of up to 5 digits.
set -euo pipefail
cd "$(dirname "$0")/.."
QUILL="${QUILL:-.venv/bin/quill}"
OUT=benchmarks/results
mkdir -p "$OUT"
presets=("$@")
[ ${#presets[@]} -eq 0 ] && presets=(add3-reversed mul2-scratchpad calc3 add3-plain)
for preset in "${presets[@]}"; do
  run="runs/bench-$preset"
  start=$(date +%s)
  "$QUILL" train --preset "$preset" --out-dir "$run" --overwrite --no-progress | tee "$OUT/arith-$preset-train.log"
  echo "train_wall_s=$(( $(date +%s) - start ))" | tee -a "$OUT/arith-$preset-train.log"
  n=2000
  [ "$preset" = mul2-scratchpad ] && n=800  # 2-digit x 2-digit has only ~1,000 test-split problems in all
  "$QUILL" task eval "$run" --n "$n" --eval-seed 1000 | tee "$OUT/arith-$preset-eval.txt"
  "$QUILL" task eval "$run" --n "$n" --eval-seed 1000 --json > "$OUT/arith-$preset-eval.json"
  if [ "${preset#add3}" != "$preset" ]; then  # every add3 preset: also operands of up to 5 digits
    "$QUILL" task eval "$run" --digits 5 --n 2000 --eval-seed 1000 | tee "$OUT/arith-$preset-length5.txt"
  fi
done
