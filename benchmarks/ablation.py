"""Ablation of the GPT paper features: the baseline, then each ModelConfig flag alone.

    flock /tmp/quill-cpu.lock python benchmarks/ablation.py [--steps 2000] [--only rope,gelu]

Every run is the ``cpu-small`` preset (4 layers, 4 heads, 128 wide, block 64, batch 32,
AdamW lr 2e-3 cosine to 2e-4) on Tiny Shakespeare with the same seed, so the batches and
the schedule are the same and only the model differs. ``--steps`` shortens the schedule
(the cosine decays over the shorter run). One eval, at the end: the val loss is the mean over
the preset's eval_iters (50) batches of the val split (the same batches for every variant).
Writes benchmarks/results/ablation.json and .log and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import torch  # noqa: E402

from quillgpt.config import preset  # noqa: E402
from quillgpt.tasks.dataset import open_dataset  # noqa: E402
from quillgpt.train import Trainer  # noqa: E402

VARIANTS = {
    "baseline": ({}, "learned positions, LayerNorm, ReLU, untied, no QK-norm (the lecture)"),
    "rope": ({"position": "rope"}, "RoPE (Su et al. 2021)"),
    "rmsnorm": ({"norm": "rms"}, "RMSNorm (Zhang & Sennrich 2019)"),
    "gelu": ({"activation": "gelu"}, "GELU (Hendrycks & Gimpel 2016)"),
    "swiglu": ({"activation": "swiglu"}, "SwiGLU (Shazeer 2020)"),
    "tied": ({"tie_weights": True}, "tied embedding / lm_head (Press & Wolf 2017)"),
    "qk_norm": ({"qk_norm": True}, "QK-norm (Henry et al. 2020; Dehghani et al. 2023)"),
}


def run_variant(name: str, steps: int, work: Path, data: str | None) -> dict:
    flags, _ = VARIANTS[name]
    config = preset("cpu-small").replace({"model": flags, "train": {
        "max_iters": steps, "eval_interval": steps, "eval_first": False, "sample_chars": 0,
        "out_dir": str(work / name)}})
    dataset = open_dataset(config, data)
    tic = time.perf_counter()
    trainer = Trainer(config, dataset, work / name)
    result = trainer.train()
    return {"variant": name, "flags": flags, "parameters": trainer.model.num_parameters(), "steps": result.steps,
            "val_loss": result.val_loss, "train_loss": result.train_loss, "val_bpc": result.val_bpc,
            "best_val_loss": result.best_val_loss, "seconds": round(time.perf_counter() - tic, 1)}


def table(rows: list[dict]) -> str:
    base = next((r["val_loss"] for r in rows if r["variant"] == "baseline"), None)
    lines = ["| variant | flag | parameters | val loss | vs baseline | train loss | wall s |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        flag = ", ".join(f"{k}={v}" for k, v in r["flags"].items()) or "(defaults)"
        delta = f"{r['val_loss'] - base:+.4f}" if base is not None else "n/a"
        lines.append(f"| {r['variant']} | `{flag}` | {r['parameters']:,} | {r['val_loss']:.4f} | {delta} | "
                     f"{r['train_loss']:.4f} | {r['seconds']:.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=2000, help="training steps per run (cpu-small: 2000)")
    parser.add_argument("--only", default="", help="comma-separated variants (default: all)")
    parser.add_argument("--work", default="runs/ablation", help="run directories go here")
    parser.add_argument("--data", help="where the Tiny Shakespeare file is, if not in the usual places")
    parser.add_argument("--results", default=str(ROOT / "benchmarks" / "results"))
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)  # on a shared, busy CPU one thread avoids OpenMP barrier stalls
    names = [n for n in args.only.split(",") if n] or list(VARIANTS)
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        sys.exit(f"unknown variant(s) {unknown}: choose from {', '.join(VARIANTS)}")
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    log = open(results / "ablation.log", "w")  # noqa: SIM115 (written line by line as runs finish)

    def say(line: str) -> None:
        print(line, flush=True)
        log.write(line + "\n")
        log.flush()

    started = datetime.now(timezone.utc)
    say(f"ablation on cpu-small, {args.steps} steps per run, {started:%Y-%m-%d %H:%M} UTC, "
        f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
        f"python {platform.python_version()}")
    rows = []
    for name in names:
        row = run_variant(name, args.steps, Path(args.work), args.data)
        rows.append(row)
        say(f"{name}: val {row['val_loss']:.4f} (train {row['train_loss']:.4f}), {row['parameters']:,} parameters, "
            f"{row['steps']} steps in {row['seconds']:.0f} s")
        # after every run, so a run cut short keeps what finished
        (results / "ablation.json").write_text(json.dumps(
            {"date": f"{started:%Y-%m-%d}", "preset": "cpu-small", "steps": args.steps,
             "torch_threads": torch.get_num_threads(), "rows": rows}, indent=2) + "\n")
    say("")
    say(table(rows))
    log.close()


if __name__ == "__main__":
    main()
