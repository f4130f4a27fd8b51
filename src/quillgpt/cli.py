"""The ``quill`` command line: the root that puts the command groups of ``quillgpt.commands`` together.

    quill prepare shakespeare | --text PATH...  tokenize a corpus into a dataset folder
    quill train --preset cpu-small [--n-embd 256 ...]   train (every config field is a flag)
    quill train --resume runs/cpu-small         continue a run where it stopped
    quill train --init-from RUN_DIR --dataset D  finetune a trained model on other data
    quill sample RUN_DIR --prompt "ROMEO:"      stream a sample
    quill eval RUN_DIR [--text FILE]            loss, bits per character and per byte
    quill info RUN_DIR                          parameters, config, last losses
    quill runs [DIR], quill compare RUN...      a table of runs; their curves in one PNG (--out cmp.png)
    quill report RUN_DIR                        report.md for a run and every run it started from
    quill train --preset add3-reversed          teach a GPT 3-digit addition (also mul2-scratchpad, calc3)
    quill task eval RUN_DIR --n 2000            greedy exact-match accuracy on held-out problems
    quill calc RUN_DIR "123*45" --show-work     ask it one problem
    quill lesson attention|norms|bigram         the lecture's side roads, runnable (lessons/)
    quill attention RUN_DIR --text "ROMEO:"     heatmap of one head's attention weights
    quill seq2seq --task reverse                an encoder-decoder with cross-attention
    quill sft RUN_DIR, quill chat RUN_DIR       post-training: also quill reward, quill rl, quill dpo
    quill serve RUN_DIR [--port 8000]           OpenAI-compatible server, playground at /
    quill bench train|sample|prepare|serve      speed, side by side
    quill zoo --budget 5m                       bigram, MLP, CNN, RNN, LSTM, GRU, GPT: same time each
    quill export|import                         Hugging Face folders and GGUF files

Problems with the user's input end in one line on stderr and exit code 2. Nothing imports this
module (tests/test_imports.py checks it): it sits on top of everything else.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from quillgpt import __version__
from quillgpt.commands.bench import add_bench_command
from quillgpt.commands.common import EXIT_USAGE, OneLineParser
from quillgpt.commands.export import add_export_commands
from quillgpt.commands.lessons import add_lesson_commands
from quillgpt.commands.notebook import add_notebook_commands
from quillgpt.commands.posttrain import add_posttrain_commands
from quillgpt.commands.runs import add_info_command, add_run_commands, add_sample_command
from quillgpt.commands.serve import add_serve_command
from quillgpt.commands.tasks import add_task_commands
from quillgpt.commands.train import add_train_command
from quillgpt.commands.zoo import add_zoo_command
from quillgpt.errors import QuillError


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="quill", description="Build, train and sample small GPT language models.")
    parser.add_argument("--version", action="version", version=f"quillgpt {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    # The order of `quill --help`: the pipeline first, then the side roads.
    add_run_commands(commands)  # prepare
    add_train_command(commands)
    add_sample_command(commands)  # sample, eval
    add_bench_command(commands)
    add_task_commands(commands)
    add_lesson_commands(commands)
    add_posttrain_commands(commands)
    add_serve_command(commands)
    add_zoo_command(commands)
    add_export_commands(commands)
    add_info_command(commands)
    add_notebook_commands(commands)  # runs, compare, report
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # a usage error (one line already printed), --help or --version
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    try:
        return args.func(args)
    except QuillError as exc:
        print(f"quill: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("quill: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `quill sample ... | head`
        return 0
