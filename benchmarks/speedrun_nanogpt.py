"""Speedrun: quill's ``cpu-fast`` preset against nanoGPT's documented CPU recipe, side by side.

nanoGPT is not part of this repository: clone it anywhere and pass its path.

    git clone https://github.com/karpathy/nanoGPT /tmp/nanoGPT
    python benchmarks/speedrun_nanogpt.py --nanogpt /tmp/nanoGPT

Both runs train a character-level model on Tiny Shakespeare in this Python, one after the
other, on the same machine. Data preparation is done first and not timed (for either);
each training command is timed from launch to exit, so start-up, evals and checkpoint
writing count. nanoGPT's recipe is the one in its README ("I only have a macbook"):

    python train.py config/train_shakespeare_char.py --device=cpu --compile=False --eval_iters=20
        --log_interval=1 --block_size=64 --batch_size=12 --n_layer=4 --n_head=4 --n_embd=128
        --max_iters=2000 --lr_decay_iters=2000 --dropout=0.0

The goal (issue 18): cpu-fast's final val loss <= nanoGPT's final val loss, in at most 0.33x its wall time.
Times on shared machines drift by 10-20% over minutes, so compare the two rows of one run.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

from benchlib import ROOT, machine, quill_command, timed

GOAL_RATIO = 0.33
NANOGPT_RECIPE = ["config/train_shakespeare_char.py", "--device=cpu", "--compile=False", "--eval_iters=20",
                  "--log_interval=1", "--block_size=64", "--batch_size=12", "--n_layer=4", "--n_head=4",
                  "--n_embd=128", "--max_iters=2000", "--lr_decay_iters=2000", "--dropout=0.0"]
# nanoGPT's prepare.py imports requests only to download input.txt, which we put there first.
PREPARE_NANOGPT = ("import runpy, sys, types; sys.modules.setdefault('requests', types.ModuleType('requests')); "
                   "runpy.run_path('data/shakespeare_char/prepare.py', run_name='__main__')")


def run_nanogpt(nanogpt: Path, shakespeare: Path) -> dict:
    data = nanogpt / "data" / "shakespeare_char"
    if not (data / "meta.pkl").exists():
        shutil.copyfile(shakespeare, data / "input.txt")
        subprocess.run([sys.executable, "-c", PREPARE_NANOGPT], cwd=nanogpt, check=True, capture_output=True)
    out_dir = "out-quill-speedrun"
    seconds, log = timed([sys.executable, "train.py", *NANOGPT_RECIPE, f"--out_dir={out_dir}"], nanogpt)
    evals = re.findall(r"step (\d+): train loss ([\d.]+), val loss ([\d.]+)", log)
    if not evals:
        sys.exit("could not find nanoGPT's 'step N: train loss X, val loss Y' lines in its output")
    step, train_loss, val_loss = evals[-1]
    return {"name": "nanoGPT CPU recipe (4x128, block 64, batch 12, 2000 iters, fp32)", "seconds": seconds,
            "steps": int(step), "train": float(train_loss), "val": float(val_loss)}


def run_quill(preset: str, work: Path, extra: list[str]) -> dict:
    quill, env = quill_command()
    subprocess.run([*quill, "prepare", "shakespeare", "--out", str(work / "data")], check=True, env=env,
                   capture_output=True)
    run_dir = work / "run"
    seconds, _ = timed([*quill, "train", "--preset", preset, "--dataset", str(work / "data"), "--out-dir",
                        str(run_dir), "--overwrite", "--no-progress", "--sample-chars", "0", *extra], work, env)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    last = [r for r in records if r["kind"] == "eval"][-1]
    config = json.loads((run_dir / "config.json").read_text())
    m, t = config["model"], config["train"]
    shape = (f"{m['n_layer']}x{m['n_embd']}, block {m['block_size']}, batch {t['batch_size']}, "
             f"{t['max_iters']} iters, {t['optimizer']}, {t['dtype']}")
    return {"name": f"quill {preset} ({shape})", "seconds": seconds, "steps": last["step"],
            "train": last["train_loss"], "val": last["val_loss"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nanogpt", required=True, type=Path, help="a clone of github.com/karpathy/nanoGPT")
    parser.add_argument("--preset", default="cpu-fast")
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "speedrun")
    parser.add_argument("--skip-nanogpt", action="store_true", help="only time quill (e.g. while tuning)")
    parser.add_argument("extra", nargs="*", help="flags for quill train, after --")
    args = parser.parse_args()
    if not (args.nanogpt / "train.py").is_file():
        sys.exit(f"{args.nanogpt} is not a nanoGPT checkout (no train.py): clone github.com/karpathy/nanoGPT there")
    sys.path.insert(0, str(ROOT / "src"))
    from quillgpt.corpora import find_corpus

    args.work.mkdir(parents=True, exist_ok=True)
    rows = [] if args.skip_nanogpt else [run_nanogpt(args.nanogpt.resolve(), find_corpus("shakespeare"))]
    rows.append(run_quill(args.preset, args.work, args.extra))
    base = rows[0]["seconds"]
    print(f"machine: {machine()}\n")
    print("| run | wall s (launch to exit) | final val loss | steps | vs nanoGPT wall |")
    print("|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['name']} | {row['seconds']:.1f} | {row['val']:.4f} | {row['steps']} | "
              f"{row['seconds'] / base:.2f}x |")
    if len(rows) == 2:
        ok = rows[1]["val"] <= rows[0]["val"] and rows[1]["seconds"] <= GOAL_RATIO * rows[0]["seconds"]
        print(f"\ngoal (val <= nanoGPT's, wall <= {GOAL_RATIO}x nanoGPT's): {'met' if ok else 'NOT met'}")


if __name__ == "__main__":
    main()
