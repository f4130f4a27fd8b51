#!/usr/bin/env bash
# The seed-gpt preset (the lecture's 10.8M GPT, 5,000 steps) on one GPU, bf16 + compile +
# fused attention. Needs a prepared data/shakespeare (quill prepare shakespeare) and a
# Python with torch, numpy, safetensors, tqdm and matplotlib. Writes its log, metrics and
# loss curve to ${OUT:-benchmarks/out}.
# Usage: bash benchmarks/gpu_seed_gpt.sh [extra quill train flags...]
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-benchmarks/out}"
RUN="${RUN_DIR:-/tmp/quill-seed-gpt}"
mkdir -p "$OUT"
rm -rf "$RUN"
PY="${PYTHON:-python3}"
export PYTHONPATH=src
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
  "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
  TIMEFORMAT='wall time of the whole command (start-up, compile, evals, sample): %R s'
  time "$PY" -m quillgpt train --preset seed-gpt --dataset data/shakespeare --out-dir "$RUN" \
      --dtype bfloat16 --compile --no-progress "$@"
} 2>&1 | tee "$OUT/seed_gpt.log"
cp "$RUN/metrics.jsonl" "$RUN/loss.png" "$OUT/"
