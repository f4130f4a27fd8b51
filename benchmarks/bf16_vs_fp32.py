"""Does bf16 autocast train as well as fp32? The same run twice, differing only in --dtype.

    python benchmarks/bf16_vs_fp32.py                     # seed-gpt model, batch 16, 300 steps, Tiny Shakespeare
    python benchmarks/bf16_vs_fp32.py --steps 300 --batch-size 16 --preset seed-gpt

Same seed, so the same initial weights and the same batches; the final val loss (eval_iters
batches, eval mode) of each run and their difference are printed, with the time per step.
The goal (issue 5): |bf16 - fp32| <= 0.03 after 300 steps.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from quillgpt.config import preset
from quillgpt.data import TokenDataset, resolve_dataset
from quillgpt.train import Trainer


def train_once(preset_name: str, dtype: str, steps: int, batch_size: int, eval_iters: int, dataset: TokenDataset,
               run_dir: Path) -> dict:
    config = preset(preset_name)
    t = config.train
    t.dtype, t.max_iters, t.batch_size, t.eval_iters = dtype, steps, batch_size, eval_iters
    t.eval_interval, t.eval_first, t.sample_chars, t.device = steps, False, 0, "cpu"
    t.warmup_iters = min(t.warmup_iters, steps // 10)
    trainer = Trainer(config, dataset, run_dir, progress=True)
    start = time.perf_counter()
    result = trainer.train()
    return {"dtype": dtype, "val": result.val_loss, "train": result.train_loss,
            "ms_per_step": 1000 * (time.perf_counter() - start - result.eval_seconds) / steps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="seed-gpt")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--eval-iters", type=int, default=50)
    parser.add_argument("--dataset", default="shakespeare")
    args = parser.parse_args()
    dataset = TokenDataset(resolve_dataset(args.dataset))
    with tempfile.TemporaryDirectory() as tmp:
        rows = [train_once(args.preset, dtype, args.steps, args.batch_size, args.eval_iters, dataset,
                           Path(tmp) / dtype) for dtype in ("float32", "bfloat16")]
    print(f"\n{args.preset} model, batch {args.batch_size}, {args.steps} steps, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads\n")
    print("| dtype | final train loss | final val loss | ms/step (without evals) |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r['dtype']} | {r['train']:.4f} | {r['val']:.4f} | {r['ms_per_step']:.0f} |")
    gap = abs(rows[1]["val"] - rows[0]["val"])
    print(f"\n|val(bf16) - val(fp32)| = {gap:.4f} (goal <= 0.03: {'met' if gap <= 0.03 else 'NOT met'}); "
          f"bf16 step {rows[0]['ms_per_step'] / rows[1]['ms_per_step']:.2f}x faster")


if __name__ == "__main__":
    main()
