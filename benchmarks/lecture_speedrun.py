"""The lecture's result against the clock: the seed-fast preset, and seed-gpt for the same minutes.

    python benchmarks/lecture_speedrun.py                         # seed-fast alone
    python benchmarks/lecture_speedrun.py --baseline-minutes 40   # then seed-gpt, stopped after 40 minutes

The target is the lecture's val loss, 1.4856, on Tiny Shakespeare's character-level val split
(the last 10% of the text), scored on the *whole* split by ``quill eval`` (not the eval-batches
estimate logged during training), within 60 minutes from launching ``quill train`` to the exit
of ``quill eval``, on a 2-core CPU. Both runs train on the train split only.

The baseline is the lecture's recipe as the seed-gpt preset has it (AdamW 3e-4, cosine over
5,000 steps) in bfloat16, quill's fastest path for it on a CPU, stopped by ``--max-minutes``;
it evaluates every 100 steps on 20 batches (the preset's 500 x 200 would draw no curve), which
costs it a few percent of its minutes. The table prints val against wall time for both, then
each run's whole-split score; the PNG draws the same.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from benchlib import ROOT, machine, quill_command, timed

LECTURE_VAL = 1.4856  # the lecture's final val loss (6x384 GPT, 5,000 steps)
TARGET_MINUTES = 60.0
BASELINE_EVALS = ["--eval-interval", "100", "--eval-iters", "20"]


def train_and_score(label: str, preset: str, run_dir: Path, extra: list[str]) -> dict:
    """Train ``preset`` (timed from launch to exit), then score it on the whole val split (timed too)."""
    quill, env = quill_command()
    train_s, _ = timed([*quill, "train", "--preset", preset, "--out-dir", str(run_dir), "--overwrite",
                        "--no-progress", "--sample-chars", "0", *extra], ROOT, env)
    eval_s, out = timed([*quill, "eval", str(run_dir), "--json"], ROOT, env)
    score = json.loads(out.strip().splitlines()[-1])
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    curve = [(r["elapsed_s"], r["step"], r["val_loss"]) for r in records if r["kind"] == "eval"]
    config = json.loads((run_dir / "config.json").read_text())
    run = {"label": label, "preset": preset, "train_s": train_s, "eval_s": eval_s, "val": score["loss"],
           "step": score["step"], "tokens": score["tokens"], "curve": curve, "config": config, "machine": machine()}
    (run_dir / "speedrun.json").write_text(json.dumps(run, indent=1))
    return run


def earlier_run(run_dir: Path) -> dict:
    """The measurement an earlier run of this script left in ``run_dir`` (for --reuse-preset-run)."""
    path = run_dir / "speedrun.json"
    if not path.is_file():
        sys.exit(f"{path} does not exist: run the script once without --reuse-preset-run")
    run = json.loads(path.read_text())
    if run["machine"] != machine():
        sys.exit(f"{path} was measured on {run['machine']}, not on this machine ({machine()}): rerun it here")
    return run


def describe(config: dict) -> str:
    m, t = config["model"], config["train"]
    dtype = t["dtype"]
    if dtype == "auto":  # what it meant on this machine (a reused run is refused on another one)
        from quillgpt.device import resolve_device, resolve_dtype

        resolved = resolve_dtype(dtype, resolve_device(t["device"]))
        dtype = f"auto = {str(resolved).removeprefix('torch.')}"
    return (f"{m['n_layer']}x{m['n_embd']}, block {m['block_size']}, batch {t['batch_size']}, {t['optimizer']}, "
            f"{t['lr_schedule']}, {dtype}, dropout {m['dropout']}")


def print_tables(runs: list[dict]) -> None:
    print(f"machine: {machine()}\n")
    print("Val loss against wall time (training loop's clock; the estimate logged at each eval):\n")
    print("| run | step | minutes | val (estimate) |")
    print("|---|---|---|---|")
    for run in runs:
        for seconds, step, val in run["curve"]:
            print(f"| {run['label']} | {step} | {seconds / 60:.1f} | {val:.4f} |")
    print(f"\nWhole val split ({runs[0]['tokens']:,} tokens) scored by quill eval; wall from launching "
          "quill train to the exit of quill eval:\n")
    print("| run | shape | steps | val (whole split) | train wall min | + eval = total min | target |")
    print("|---|---|---|---|---|---|---|")
    for run in runs:
        total = (run["train_s"] + run["eval_s"]) / 60
        met = run["val"] <= LECTURE_VAL and total <= TARGET_MINUTES
        print(f"| {run['label']} | {describe(run['config'])} | {run['step']} | **{run['val']:.4f}** | "
              f"{run['train_s'] / 60:.1f} | {total:.1f} | {'met' if met else 'not met'} |")
    print(f"\ntarget: val <= {LECTURE_VAL} within {TARGET_MINUTES:.0f} minutes")


def plot(runs: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for run in runs:
        minutes = [seconds / 60 for seconds, _, _ in run["curve"]]
        line, = ax.plot(minutes, [val for _, _, val in run["curve"]], marker=".", label=f"{run['label']} (estimate)")
        ax.plot([(run["train_s"] + run["eval_s"]) / 60], [run["val"]], marker="*", markersize=12,
                color=line.get_color(), linestyle="none", label=f"{run['label']}: whole split {run['val']:.4f}")
    ax.axhline(LECTURE_VAL, color="gray", linestyle="--", label=f"lecture {LECTURE_VAL}")
    ax.set_xlabel("wall minutes")
    ax.set_ylabel("val loss (nats per character)")
    ax.set_ylim(LECTURE_VAL - 0.1, 2.6)
    ax.set_title("Tiny Shakespeare, char level: val loss against wall time")
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def check_arguments(args: argparse.Namespace) -> None:
    """Every mistake in one line before the first run starts, not after an hour of training."""
    sys.path.insert(0, str(ROOT / "src"))
    from quillgpt.config import PRESETS

    for flag, name in (("--preset", args.preset), ("--baseline-preset", args.baseline_preset)):
        if name not in PRESETS:
            sys.exit(f"{flag}: unknown preset {name!r}: choose one of {', '.join(PRESETS)}")
    if not (math.isfinite(args.baseline_minutes) and args.baseline_minutes >= 0):
        sys.exit(f"--baseline-minutes must be a number of minutes >= 0 (0: no baseline), got {args.baseline_minutes}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="seed-fast")
    parser.add_argument("--baseline-minutes", type=float, default=0.0,
                        help="also train the baseline preset for this many minutes (0: no baseline)")
    parser.add_argument("--baseline-preset", default="seed-gpt")
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "lecture-speedrun")
    parser.add_argument("--png", type=Path, default=ROOT / "benchmarks" / "results" / "lecture_speedrun.png")
    parser.add_argument("--reuse-preset-run", action="store_true",
                        help="take the preset's figures from this script's earlier run on this machine "
                             "(WORK/PRESET/speedrun.json) and run only the baseline")
    parser.add_argument("extra", nargs="*", help="flags for the preset's quill train, after --")
    args = parser.parse_args(argv)
    check_arguments(args)
    preset_dir = args.work / args.preset
    runs = [earlier_run(preset_dir) if args.reuse_preset_run else
            train_and_score(args.preset, args.preset, preset_dir, args.extra)]
    if args.baseline_minutes:
        runs.append(train_and_score(f"{args.baseline_preset}, {args.baseline_minutes:g} min", args.baseline_preset,
                                    args.work / f"{args.baseline_preset}-baseline",
                                    ["--dtype", "bfloat16", "--max-minutes", str(args.baseline_minutes),
                                     *BASELINE_EVALS]))
    print_tables(runs)
    plot(runs, args.png)
    print(f"plot: {args.png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
