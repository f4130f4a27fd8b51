"""Pretrain on a large corpus, then finetune on Tiny Shakespeare: does it beat Shakespeare alone?

With one byte-level BPE tokenizer (trained on the novels' train split) and the same
wall-clock budget for every arm, it trains:

  (a) Tiny Shakespeare only, for P + F minutes;
  (b) the large corpus (95 English novels) only, for P + F minutes;
  (c) the large corpus for P minutes, then --init-from that model, Tiny Shakespeare for F minutes
      (fresh optimizer, new warmup + cosine schedule, learning rate --finetune-lr);

and reports each model's bits per character on the Tiny Shakespeare val split (``quill eval``,
every val token scored), for its final and for its best checkpoint, and a sample of each.

Each run stops at its time budget (``--max-minutes``); its cosine schedule is sized to end
there, from a short timing probe of the same model (steps = budget / measured time per
step, with eval time included). Budgets are wall-clock: run it on an otherwise idle
machine, so that wall-clock time is CPU time.

    python benchmarks/pretrain_finetune.py --pretrain-minutes 10 --finetune-minutes 5
    python benchmarks/pretrain_finetune.py --pretrain-minutes 0.2 --finetune-minutes 0.1 --preset tiny  # smoke test
    python benchmarks/pretrain_finetune.py ... -- --dtype bfloat16   # extra flags for every quill train

Everything goes under --work (datasets, runs); the report (markdown) is printed and written
to --report.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SAMPLE_PROMPT = "ROMEO:"


def quill(*args: str, capture: bool = True) -> str:
    """Run the quill CLI of this checkout; stop the experiment with its error if it fails."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    print("$ quill " + " ".join(args), file=sys.stderr, flush=True)
    result = subprocess.run([sys.executable, "-m", "quillgpt", *args], env=env, text=True,
                            stdout=subprocess.PIPE if capture else None, stderr=subprocess.PIPE)
    if result.returncode != 0:
        sys.exit(f"quill {args[0]} failed ({result.returncode}): {result.stderr.strip()[-2000:]}")
    return result.stdout or ""


def eval_records(run: Path) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r.get("kind") == "eval"]


class Speed:
    """Seconds per training step, and per eval (with its loss plot and checkpoint), from a probe run.

    The probe logs every 10 steps and evaluates every 20: log intervals (10, 20], (30, 40],
    (50, 60] hold training steps only, (20, 30] and (40, 50] an eval as well.
    """

    def __init__(self, work: Path, dataset: Path, train_flags: list[str], eval_interval: int) -> None:
        probe = work / "runs" / "probe"
        quill("train", *train_flags, "--dataset", str(dataset), "--out-dir", str(probe), "--overwrite",
              "--max-iters", "60", "--eval-interval", "20", "--log-interval", "10")
        records = [json.loads(line) for line in (probe / "metrics.jsonl").read_text().splitlines()]
        seconds = {r["step"]: r["ms_per_step"] * 10 / 1000 for r in records if r.get("kind") == "train"}
        self.step = (seconds[20] + seconds[40] + seconds[60]) / 30
        self.eval = max(0.0, (seconds[30] + seconds[50]) / 2 - 10 * self.step)
        self.eval_interval = eval_interval

    def steps_in(self, minutes: float) -> int:
        """Steps that fit in ``minutes`` with an eval every eval_interval steps and one at the end."""
        per_step = self.step + self.eval / self.eval_interval
        return max(10, int((60 * minutes - 2 * self.eval) / per_step))


def train(name: str, work: Path, dataset: Path, minutes: float, speed: Speed, train_flags: list[str],
          extra: list[str]) -> Path:
    # The cosine schedule is sized to end at the time limit; --max-minutes stops it there in any case.
    run = work / "runs" / name
    quill("train", *train_flags, "--dataset", str(dataset), "--out-dir", str(run), "--overwrite",
          "--max-iters", str(speed.steps_in(minutes)), "--max-minutes", str(minutes), *extra)
    return run


def shakespeare_bpc(run: Path, shakespeare: Path, which: str) -> dict:
    return json.loads(quill("eval", str(run), "--dataset", str(shakespeare), "--checkpoint", which, "--json"))


def sample(run: Path, tokens: int) -> str:
    return quill("sample", str(run), "--prompt", SAMPLE_PROMPT, "--max-new-tokens", str(tokens), "--seed", "1",
                 "--temperature", "0.8", "--top-k", "50").rstrip("\n")


def eval_interval(preset_name: str, extra: list[str]) -> int:
    """The runs' eval interval: the preset's, unless the extra flags set it."""
    for i, flag in enumerate(extra):
        if flag == "--eval-interval" and i + 1 < len(extra):
            return int(extra[i + 1])
        if flag.startswith("--eval-interval="):
            return int(flag.split("=", 1)[1])
    sys.path.insert(0, str(ROOT / "src"))
    from quillgpt.config import preset

    return preset(preset_name).train.eval_interval


def finetune_min_lr(preset_name: str, finetune_lr: float) -> list[str]:
    """--min-lr for the finetune leg (a tenth of its lr), unless the preset's schedule is constant
    and would not read it (quill refuses a flag a run ignores)."""
    sys.path.insert(0, str(ROOT / "src"))
    from quillgpt.config import preset

    if preset(preset_name).train.lr_schedule == "constant":
        return []
    return ["--min-lr", str(finetune_lr / 10)]


def parse_args() -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pretrain-minutes", type=float, default=10.0)
    parser.add_argument("--finetune-minutes", type=float, default=5.0)
    parser.add_argument("--preset", default="cpu-small", help="model and batch shape of every run")
    parser.add_argument("--vocab-size", type=int, default=2048, help="of the BPE tokenizer, trained on the novels")
    parser.add_argument("--finetune-lr", type=float, default=1e-3, help="peak learning rate of (c)'s finetuning")
    parser.add_argument("--pretrain-corpus", default="english-novels", help="a registered corpus name")
    parser.add_argument("--sample-tokens", type=int, default=150)
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "pretrain_finetune",
                        help="datasets and runs (large; runs/ is git-ignored)")
    parser.add_argument("--report", type=Path, default=ROOT / "benchmarks" / "results" / "pretrain_finetune.md")
    args, extra = parser.parse_known_args()
    return args, [a for a in extra if a != "--"]


def main() -> None:
    args, extra = parse_args()
    work = args.work.resolve()
    started = time.perf_counter()
    novels = work / "data" / f"{args.pretrain_corpus}-bpe{args.vocab_size}"
    shakespeare = work / "data" / f"shakespeare-bpe{args.vocab_size}"
    if not (novels / "meta.json").is_file():
        quill("prepare", args.pretrain_corpus, "--tokenizer", "bpe", "--vocab-size", str(args.vocab_size),
              "--out", str(novels))
    if not (shakespeare / "meta.json").is_file():
        quill("prepare", "shakespeare", "--tokenizer-from", str(novels), "--out", str(shakespeare))

    flags = ["--preset", args.preset, "--no-progress", "--sample-chars", "0", *extra]
    speed = Speed(work, shakespeare, flags, eval_interval(args.preset, extra))
    total = args.pretrain_minutes + args.finetune_minutes
    runs = {
        "a": train("a_shakespeare_only", work, shakespeare, total, speed, flags, []),
        "b": train("b_novels_only", work, novels, total, speed, flags, []),
    }
    pretrained = train("c_pretrain", work, novels, args.pretrain_minutes, speed, flags, [])
    runs["c"] = train("c_finetune", work, shakespeare, args.finetune_minutes, speed, flags,
                      ["--init-from", str(pretrained), "--lr", str(args.finetune_lr),
                       *finetune_min_lr(args.preset, args.finetune_lr)])

    rows = []
    for key, run in runs.items():
        final, best = (shakespeare_bpc(run, shakespeare, which) for which in ("latest", "best"))
        steps = eval_records(run)[-1]["step"] + (eval_records(pretrained)[-1]["step"] if key == "c" else 0)
        rows.append({"key": key, "run": run, "final": final, "best": best, "steps": steps,
                     "sample": sample(run, args.sample_tokens)})
    print(report(args, extra, speed, rows, time.perf_counter() - started, shakespeare))


def report(args: argparse.Namespace, extra: list[str], speed: Speed, rows: list[dict], seconds: float,
           shakespeare: Path) -> str:
    p, f = args.pretrain_minutes, args.finetune_minutes
    arms = {"a": f"Tiny Shakespeare only, {p + f:g} min", "b": f"{args.pretrain_corpus} only, {p + f:g} min",
            "c": f"{args.pretrain_corpus} {p:g} min, then Tiny Shakespeare {f:g} min"}
    tokens = rows[0]["final"]["tokens"]
    lines = [
        f"Pretrain -> finetune: preset {args.preset}{' ' + ' '.join(extra) if extra else ''}, byte-level BPE "
        f"vocab {args.vocab_size} (trained on the {args.pretrain_corpus} train split), finetune lr "
        f"{args.finetune_lr:g}; {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
        f"probe: {speed.step * 1000:.0f} ms per step, {speed.eval:.1f} s per eval (every {speed.eval_interval} "
        f"steps); whole script {seconds / 60:.1f} min.",
        f"Scored on every token of the Tiny Shakespeare val split ({tokens:,} tokens, "
        f"{rows[0]['final']['chars']:,} characters; `quill eval RUN --dataset {shakespeare.name}`).",
        "",
        "| arm | training | steps | Shakespeare val bpc, final | ..., best checkpoint | val loss/token, final |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| ({r['key']}) | {arms[r['key']]} | {r['steps']:,} | {r['final']['bits_per_char']:.4f} | "
                     f"{r['best']['bits_per_char']:.4f} | {r['final']['loss']:.4f} |")
    a, c = rows[0]["final"]["bits_per_char"], rows[2]["final"]["bits_per_char"]
    lines += ["", f"(c) - (a), final checkpoints: {c - a:+.4f} bits per character "
                  f"({'c beats a' if c < a else 'c does NOT beat a'}).",
              "(b)'s best checkpoint is chosen on the novels' val split; (a)'s and (c)'s on Tiny Shakespeare's.", ""]
    for r in rows:
        lines += [f"Sample of ({r['key']}) (prompt {SAMPLE_PROMPT!r}, {args.sample_tokens} tokens, temperature 0.8, "
                  "top-k 50, seed 1):", "", "```", r["sample"], "```", ""]
    text = "\n".join(lines)
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(text + "\n")
    return text


if __name__ == "__main__":
    main()
