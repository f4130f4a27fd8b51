"""The lab's commands: the lessons, the attention heatmap and the seq2seq task.

    quill lesson attention | norms | bigram [--text FILE]
    quill attention RUN_DIR --text "ROMEO:" --layer 0 --head 0 --out attn.png
    quill seq2seq --task reverse [--steps 600 --max-len 10 --seed 1337]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from quillgpt import argtypes
from quillgpt.checkpoint import load_run
from quillgpt.commands.common import add_run_flags
from quillgpt.device import resolve_device
from quillgpt.errors import ConfigError
from quillgpt.lessons import attention, bigram, norms, seq2seq
from quillgpt.lessons.heatmap import plot_attention, run_attention


def cmd_lesson(args: argparse.Namespace) -> int:
    result: Any
    if args.lesson == "attention":
        result = attention.run(seed=args.seed)
    elif args.lesson == "norms":
        result = norms.run(seed=args.seed)
    else:
        result = bigram.run(args.text, args.data, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                            seed=args.seed)
    failed = [name for name, passed in result.checks.items() if not passed]
    for name in failed:
        print(f"quill: lesson {args.lesson}: check failed: {name}", file=sys.stderr)
    return 1 if failed else 0  # a lesson whose checks fail is a bug: say so in the exit code


def cmd_attention(args: argparse.Namespace) -> int:
    run = load_run(args.run_dir, which=args.checkpoint, device=resolve_device(args.device))
    weights, labels = run_attention(run, args.text, args.layer, args.head)
    out = Path(args.out)
    if out.is_dir():
        raise ConfigError(f"--out {out} is a folder: give a file name such as {out / 'attn.png'}")
    try:
        plot_attention(weights, labels, out, f"{run.run_dir.name}: layer {args.layer}, head {args.head}")
    except OSError as exc:
        raise ConfigError(f"cannot write {out} ({exc.strerror or exc}): choose another --out") from None
    strongest = weights[-1].argmax().item()
    print(f"wrote {out}: layer {args.layer}, head {args.head}, {len(labels)} tokens; the last token "
          f"{labels[-1]!r} attends most to {labels[strongest]!r} (position {strongest}, "
          f"weight {weights[-1, strongest].item():.2f})")
    return 0


def cmd_seq2seq(args: argparse.Namespace) -> int:
    task = seq2seq.Seq2SeqTask(args.task, args.min_len, args.max_len, args.letters)
    seq2seq.train(task, steps=args.steps, batch_size=args.batch_size, lr=args.lr, n_layer=args.n_layer,
                  n_head=args.n_head, n_embd=args.n_embd, n_test=args.n_test, seed=args.seed)
    return 0


def add_lesson_commands(commands: argparse._SubParsersAction) -> None:
    """Add ``lesson``, ``attention`` and ``seq2seq`` to the ``quill`` subcommands."""
    lesson = commands.add_parser("lesson", help="the lecture's side roads, runnable: attention, norms, bigram")
    lesson.add_argument("lesson", choices=["attention", "norms", "bigram"])
    lesson.add_argument("--seed", type=argtypes.seed, default=1337)
    lesson.add_argument("--text", metavar="FILE", help="bigram: your own UTF-8 text (default: Tiny Shakespeare)")
    lesson.add_argument("--data", help="bigram: where Tiny Shakespeare is, if not in the usual places")
    lesson.add_argument("--steps", type=argtypes.count, default=300, help="bigram: training steps (default 300)")
    lesson.add_argument("--batch-size", type=argtypes.whole(1, 65536), default=256,
                        help="bigram: windows of 8 per step")
    lesson.add_argument("--lr", type=argtypes.real(above=0), default=0.1,
                        help="bigram: AdamW learning rate (default 0.1)")
    lesson.set_defaults(func=cmd_lesson)

    attention = commands.add_parser("attention", help="heatmap PNG of one head's attention weights on some text")
    attention.add_argument("run_dir")
    attention.add_argument("--text", required=True, help="what the model reads (at most block_size tokens)")
    attention.add_argument("--layer", type=argtypes.whole(None), default=0, help="layer, from 0 (default 0)")
    attention.add_argument("--head", type=argtypes.whole(None), default=0, help="head, from 0 (default 0)")
    attention.add_argument("--out", default="attention.png", help="PNG file to write (default attention.png)")
    add_run_flags(attention)
    attention.set_defaults(func=cmd_attention)

    seq = commands.add_parser("seq2seq", help="train an encoder-decoder with cross-attention on a string task")
    seq.add_argument("--task", choices=list(seq2seq.TASKS), default="reverse")
    seq.add_argument("--steps", type=argtypes.count, default=600, help="training steps (default 600)")
    seq.add_argument("--min-len", type=argtypes.whole(None, 1000), default=1, help="shortest string (default 1)")
    seq.add_argument("--max-len", type=argtypes.whole(None, 1000), default=10, help="longest string (default 10)")
    seq.add_argument("--letters", type=argtypes.whole(None), default=26,
                     help="alphabet: the first N letters (default 26)")
    seq.add_argument("--batch-size", type=argtypes.whole(1, 65536), default=64)
    seq.add_argument("--lr", type=argtypes.real(above=0), default=3e-3)
    seq.add_argument("--n-layer", type=argtypes.whole(1, 64), default=2,
                     help="encoder blocks, and as many decoder blocks")
    seq.add_argument("--n-head", type=argtypes.whole(1, 64), default=4)
    seq.add_argument("--n-embd", type=argtypes.whole(1, 4096), default=64)
    seq.add_argument("--n-test", type=argtypes.whole(1, 100_000), default=500, help="held-out strings for exact match")
    seq.add_argument("--seed", type=argtypes.seed, default=1337)
    seq.set_defaults(func=cmd_seq2seq)
