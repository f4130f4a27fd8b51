"""``quill zoo``: train makemore's lineage of models for the same wall-clock budget each, compare.

    quill zoo --budget 5m [--models bigram,mlp,cnn,rnn,lstm,gru,gpt] [--out runs/zoo]

Every model trains with the same Trainer on the same data (Tiny Shakespeare by default),
batch 32 x 64 tokens, AdamW, for ``--budget`` of wall-clock time (TrainConfig.max_minutes),
then is evaluated on the same val batches. The schedule is a 100-step linear warmup and then a
constant learning rate: a cosine needs the number of steps in advance, which a time budget does
not give (the cosine here spans 10^9 steps, so it never decays). Writes OUT/zoo.json, OUT/zoo.png
and one run directory per model (OUT/runs/NAME, usable with quill sample / eval / info).
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import shutil
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from quillgpt import argtypes
from quillgpt.config import RunConfig, preset
from quillgpt.errors import ConfigError
from quillgpt.metrics import MetricsLog
from quillgpt.tasks.dataset import open_dataset
from quillgpt.train import Trainer, TrainingError

NO_END = 10**9  # max_iters for a time-limited run: the time budget ends it


@dataclass(frozen=True)
class ZooEntry:
    what: str  # one line for the table: the model and its paper
    model: dict[str, Any]  # ModelConfig fields over the cpu-small preset's
    lr: float


# Sizes: roughly the GPT's parameter count (cpu-small, ~0.8M) where the design allows, and a
# learning rate that suits each (the bigram is a lookup table and wants a large one).
ZOO_MODELS: dict[str, ZooEntry] = {
    "bigram": ZooEntry("bigram table (the lecture's baseline)", {"arch": "bigram"}, 1e-2),
    "mlp": ZooEntry("MLP, 16 tokens of context (Bengio et al. 2003)", {"arch": "mlp", "n_embd": 64, "context_len": 16},
                    1e-3),
    "cnn": ZooEntry("WaveNet dilated causal CNN, 6 layers, field 64 (van den Oord et al. 2016)",
                    {"arch": "cnn", "n_layer": 6, "n_embd": 128}, 2e-3),
    "rnn": ZooEntry("Elman RNN, 2 x 256 (Elman 1990)", {"arch": "rnn", "n_layer": 2, "n_embd": 256}, 1e-3),
    "lstm": ZooEntry("LSTM, 2 x 256 (Hochreiter & Schmidhuber 1997)", {"arch": "lstm", "n_layer": 2, "n_embd": 256},
                     2e-3),
    "gru": ZooEntry("GRU, 2 x 256 (Cho et al. 2014)", {"arch": "gru", "n_layer": 2, "n_embd": 256}, 2e-3),
    "gpt": ZooEntry("GPT, cpu-small: 4 layers x 128, 4 heads (Vaswani et al. 2017)", {"arch": "gpt"}, 2e-3),
}


def parse_budget(text: str) -> float:
    """'30s', '5m', '1.5m', '1h' -> seconds."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*([smh])\s*", text)
    if not match or float(match.group(1)) <= 0:
        raise ConfigError(f"--budget must be a positive time like 30s, 5m or 1h, got {text!r}")
    return float(match.group(1)) * {"s": 1, "m": 60, "h": 3600}[match.group(2)]


def parse_models(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in ZOO_MODELS]
    if unknown or not names:
        raise ConfigError(f"unknown model(s) {', '.join(unknown) or '(none given)'} in --models: "
                          f"choose from {','.join(ZOO_MODELS)}")
    return names


def zoo_config(name: str, budget_s: float, dataset: str, out_dir: Path, eval_iters: int, seed: int) -> RunConfig:
    entry = ZOO_MODELS[name]
    base = preset("cpu-small")
    return base.replace({
        "model": {**entry.model, "dropout": 0.0},
        "train": {"dataset": dataset, "out_dir": str(out_dir), "max_iters": NO_END, "eval_interval": NO_END,
                  "eval_first": False, "eval_iters": eval_iters, "lr": entry.lr, "min_lr": entry.lr / 10,
                  "warmup_iters": 100, "max_minutes": budget_s / 60, "sample_chars": 0, "seed": seed,
                  "device": "cpu", "dtype": "float32"},
    })


ZOO_MARK = "zoo-model.json"  # in every run directory quill zoo made, so a rerun knows what it may replace


def check_run_dirs(run_dirs: list[Path]) -> None:
    """Refuse to start if a run directory exists that quill zoo did not make: it is never deleted."""
    for run_dir in run_dirs:
        if run_dir.exists() and not (run_dir / ZOO_MARK).is_file():
            raise ConfigError(f"{run_dir} exists and was not made by quill zoo: choose another --out "
                              "(quill zoo replaces only its own run directories)")


def run_one(name: str, config: RunConfig, data: str | None) -> dict[str, Any]:
    run_dir = Path(config.train.out_dir)
    if (run_dir / ZOO_MARK).is_file():  # an earlier zoo run of this model (check_run_dirs let nothing else by)
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    (run_dir / ZOO_MARK).write_text(json.dumps({"model": name}) + "\n")
    trainer = Trainer(config, open_dataset(config, data), run_dir, progress=False)
    try:
        result = trainer.train()
    except TrainingError as exc:  # one model diverging should not lose the others' results
        return {"model": name, "what": ZOO_MODELS[name].what, "parameters": trainer.model.num_parameters(),
                "steps": trainer.step, "error": str(exc), "run_dir": str(run_dir)}
    train_s = result.seconds - result.eval_seconds
    tokens = result.steps * config.train.batch_size * config.model.block_size
    return {"model": name, "what": ZOO_MODELS[name].what, "parameters": trainer.model.num_parameters(),
            "steps": result.steps, "train_seconds": round(train_s, 2), "tokens_per_s": round(tokens / train_s, 1),
            "val_loss": result.val_loss, "val_bpc": result.val_bpc, "train_loss": result.train_loss,
            "lr": config.train.lr, "run_dir": str(run_dir)}


def format_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| model | parameters | steps | tokens/s | val loss | val bpc |", "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['parameters']:,} | {r['steps']:,} | failed: {r['error'][:60]} | | |")
            continue
        bpc = f"{r['val_bpc']:.3f}" if r.get("val_bpc") is not None else "n/a"
        lines.append(f"| {r['model']} | {r['parameters']:,} | {r['steps']:,} | {r['tokens_per_s']:,.0f} | "
                     f"{r['val_loss']:.4f} | {bpc} |")
    return "\n".join(lines)


def plot_zoo(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    """Left: training loss against wall-clock seconds; right: the final val bits per character."""
    # matplotlib is imported here, not at the top: it is slow to import and only this function draws.
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (curves, bars) = plt.subplots(1, 2, figsize=(12, 4.5))
    for r in rows:
        seconds, losses, elapsed, last_step = [], [], 0.0, 0
        for record in MetricsLog(Path(r["run_dir"]) / "metrics.jsonl").read():
            if record.get("kind") == "train" and record.get("loss") is not None:
                elapsed += record["ms_per_step"] * (record["step"] - last_step) / 1000
                last_step = record["step"]
                seconds.append(elapsed)
                losses.append(record["loss"])
        curves.plot(seconds, losses, label=r["model"])
    curves.set(xlabel="training seconds", ylabel="train loss (nats/token)", title="loss against wall-clock time")
    curves.legend()
    done = [r for r in rows if "error" not in r]
    names = [r["model"] for r in done]
    values = [r["val_bpc"] if r.get("val_bpc") is not None else r["val_loss"] for r in done]
    bars.bar(names, values, color="tab:blue")
    for i, v in enumerate(values):
        bars.text(i, v, f"{v:.2f}", ha="center", va="bottom")
    bars.set(ylabel="val bits per character", title="final val (lower is better)")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cmd_zoo(args: argparse.Namespace) -> int:
    budget = parse_budget(args.budget)
    names = parse_models(args.models)
    if args.eval_iters < 1:
        raise ConfigError(f"--eval-iters must be >= 1, got {args.eval_iters}")
    out = Path(args.out)
    if (out / "zoo.json").exists() and not args.overwrite:
        raise ConfigError(f"{out} already holds zoo results: pass --overwrite, or choose another --out")
    check_run_dirs([out / "runs" / name for name in names])
    out.mkdir(parents=True, exist_ok=True)
    started, tic = datetime.now(timezone.utc), time.perf_counter()
    rows = []
    bar = tqdm(names, desc="zoo", unit="model", disable=args.no_progress, dynamic_ncols=True)
    for name in bar:
        bar.set_postfix(model=name)
        config = zoo_config(name, budget, args.dataset, out / "runs" / name, args.eval_iters, args.seed)
        rows.append(run_one(name, config, args.data))
        row = rows[-1]
        bar.write(f"{name}: {row['steps']:,} steps, " + (f"failed: {row['error']}" if "error" in row
                                                           else f"val {row['val_loss']:.4f}"))
    bar.close()
    meta = {"date": f"{started:%Y-%m-%d %H:%M} UTC", "budget_s": budget, "dataset": args.dataset,
            "cpu": cpu_name(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "batch_size": 32, "block_size": 64, "eval_iters": args.eval_iters,
            "wall_seconds": round(time.perf_counter() - tic, 1)}
    (out / "zoo.json").write_text(json.dumps({**meta, "rows": rows}, indent=2) + "\n")
    plot_zoo(rows, out / "zoo.png", f"quill zoo --budget {args.budget}: {args.dataset}, {meta['date']}")
    print(format_table(rows))
    print(f"\n{len(rows)} models x {args.budget} on {meta['cpu']} ({meta['torch_threads']} threads), "
          f"{meta['wall_seconds']:.0f} s in all; wrote {out / 'zoo.json'} and {out / 'zoo.png'}")
    return 0


def add_zoo_command(commands: argparse._SubParsersAction) -> None:
    zoo = commands.add_parser("zoo", help="train bigram, MLP, CNN, RNN, LSTM, GRU and GPT for the same time; compare")
    zoo.add_argument("--budget", default="5m", help="wall-clock training time per model, e.g. 30s, 5m (default 5m)")
    zoo.add_argument("--models", default=",".join(ZOO_MODELS), help=f"a subset of {','.join(ZOO_MODELS)}")
    zoo.add_argument("--dataset", default="shakespeare", help="a registered corpus or a prepared dataset folder")
    zoo.add_argument("--data", help="where the named corpus file is, if not in the usual places")
    zoo.add_argument("--out", default="runs/zoo", help="results and run directories (default runs/zoo)")
    zoo.add_argument("--overwrite", action="store_true", help="replace earlier results in --out")
    zoo.add_argument("--eval-iters", type=argtypes.whole(1, 100_000), default=50,
                     help="val batches for the final loss (default 50)")
    zoo.add_argument("--seed", type=argtypes.seed, default=1337)
    zoo.add_argument("--no-progress", action="store_true", help="no progress bar")
    zoo.set_defaults(func=cmd_zoo)

