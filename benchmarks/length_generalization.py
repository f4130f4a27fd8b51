"""Length generalization of addition (issue 27): the baseline and each position scheme, several seeds.

    flock /tmp/quill-cpu.lock python benchmarks/length_generalization.py [--seeds 0,1] [--n 1000]

Every run is the ``add-long`` preset (operands of 1..N = 10 digits, reversed answers, packed rows)
with only ``--position`` changed: ``learned`` (the baseline, ids 0, 1, 2, ... along the row),
``abacus`` and ``coupled`` (tasks/position_schemes.py), each trained with every seed (the seed
draws the problems, the initial weights and the offsets). Each run is then scored by greedy
exact match at every length 1..3N on ``--n`` held-out problems a length (past N the longer
operand has exactly that many digits, as ``quill task eval --digits M`` draws them, from
``--eval-seed``). Writes length_generalization.json, .md (one table: a row per run, a column per
length) and .png (exact match against length, one line per run) to ``--results``.
``--tiny`` shrinks everything to seconds, for the test that keeps this script working.
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import torch  # noqa: E402

from quillgpt.config import RunConfig, preset  # noqa: E402
from quillgpt.fsutil import atomic_write_bytes, atomic_write_json  # noqa: E402
from quillgpt.tasks.arithmetic import problems  # noqa: E402
from quillgpt.tasks.dataset import open_dataset  # noqa: E402
from quillgpt.tasks.exact_match import Report, attempt_all  # noqa: E402
from quillgpt.train import Trainer  # noqa: E402

POSITIONS = ("learned", "abacus", "coupled")
TINY = {"model": {"n_layer": 1, "n_embd": 16, "n_head": 2, "block_size": 32},
        "train": {"max_iters": 2, "batch_size": 8, "eval_interval": 2, "eval_iters": 1, "max_minutes": 0.0},
        "arithmetic": {"digits": 2, "eval_examples": 8}}


def config_for(position: str, seed: int, steps: int | None, tiny: bool) -> RunConfig:
    changes: dict[str, dict] = {"model": {"position": position}, "train": {"seed": seed},
                                "arithmetic": {"data_seed": seed}}
    if tiny:
        changes = {k: {**TINY.get(k, {}), **v} for k, v in {**TINY, **changes}.items()}
    if steps is not None:
        changes["train"] = {**changes["train"], "max_iters": steps}
    return preset("add-long").replace(changes)


def score(trainer: Trainer, config: RunConfig, lengths: range, n: int, eval_seed: int) -> dict[str, float]:
    """Exact match at each length: problems whose longer operand has exactly that many digits."""
    out = {}
    for digits in lengths:
        tests = problems(config.arithmetic.ops, digits, n, eval_seed, "test", exact=True, all_if_fewer=True)
        report = Report(attempt_all(trainer.model, tests, config.arithmetic.format, trainer.device,
                                    position=config.model.position))
        out[str(digits)] = report.accuracy
    return out


def table(rows: list[dict], lengths: range) -> str:
    head = "| run | seed | wall s | " + " | ".join(f"{d}" for d in lengths) + " |"
    lines = [head, "|---|---:|---:|" + "---:|" * len(lengths)]
    for r in rows:
        cells = " | ".join(f"{100 * r['exact_match'][str(d)]:.1f}" for d in lengths)
        lines.append(f"| {r['position']} | {r['seed']} | {r['seconds']:.0f} | {cells} |")
    return "\n".join(lines)


def plot(rows: list[dict], lengths: range, trained: int, path: Path) -> None:
    import matplotlib  # here, not at the top: only the plot needs it (startup time)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    colors = {"learned": "tab:gray", "abacus": "tab:blue", "coupled": "tab:green"}
    for r in rows:
        ax.plot(list(lengths), [100 * r["exact_match"][str(d)] for d in lengths], "o-", markersize=3,
                color=colors.get(r["position"]), alpha=0.8, label=f"{r['position']} (seed {r['seed']})")
    ax.axvline(trained + 0.5, color="black", linestyle="--", linewidth=1, label="trained up to here")
    ax.set_xlabel("digits of the longer operand")
    ax.set_ylabel("exact match (%)")
    ax.set_ylim(-2, 102)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--positions", default=",".join(POSITIONS), help="comma-separated (default: all three)")
    parser.add_argument("--seeds", default="0,1", help="comma-separated training seeds (default 0,1)")
    parser.add_argument("--steps", type=int, default=None, help="training steps a run (default: the preset's)")
    parser.add_argument("--n", type=int, default=1000, help="held-out problems a length (default 1000)")
    parser.add_argument("--eval-seed", type=int, default=1000, help="draws the held-out problems (default 1000)")
    parser.add_argument("--work", default="runs/length", help="run directories go here")
    parser.add_argument("--results", default=str(ROOT / "benchmarks" / "results"))
    parser.add_argument("--tiny", action="store_true", help="a tiny model, 2 steps, 2 digits: checks the script")
    args = parser.parse_args(argv)
    positions = [p for p in args.positions.split(",") if p]
    if any(p not in POSITIONS for p in positions):
        sys.exit(f"--positions: choose from {', '.join(POSITIONS)}")
    seeds = [int(s) for s in args.seeds.split(",") if s]
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    started = datetime.now(timezone.utc)
    rows: list[dict] = []
    lengths = range(0)
    for position in positions:
        for seed in seeds:
            config = config_for(position, seed, args.steps, args.tiny)
            trained = config.arithmetic.digits
            lengths = range(1, 3 * trained + 1)
            tic = time.perf_counter()
            trainer = Trainer(config, open_dataset(config), Path(args.work) / f"{position}-seed{seed}",
                              progress=False)
            result = trainer.train()
            seconds = time.perf_counter() - tic
            row = {"position": position, "seed": seed, "steps": result.steps, "seconds": round(seconds, 1),
                   "val_loss": result.val_loss, "model": dataclasses.asdict(config.model),
                   "exact_match": score(trainer, config, lengths, args.n, args.eval_seed)}
            rows.append(row)
            print(f"{position} seed {seed}: {result.steps} steps in {seconds:.0f} s; exact match by length "
                  + ", ".join(f"{d}: {100 * v:.1f}%" for d, v in row["exact_match"].items()), flush=True)
            # after every run, so a run cut short keeps what finished
            atomic_write_json(results / "length_generalization.json",
                              {"date": f"{started:%Y-%m-%d}", "preset": "add-long", "tiny": args.tiny, "n": args.n,
                               "eval_seed": args.eval_seed, "cpu": platform.processor() or platform.machine(),
                               "torch_threads": torch.get_num_threads(), "rows": rows})
    text = table(rows, lengths)
    atomic_write_bytes(results / "length_generalization.md", (text + "\n").encode())
    plot(rows, lengths, lengths.stop // 3, results / "length_generalization.png")
    print("\n" + text)


if __name__ == "__main__":
    main()
