"""``quill bench train|sample|prepare|serve``: measure speed side by side (prints ratios).

train, sample and prepare are measured in this process (``quillgpt.speed``); serve starts a
``quill serve`` process and load-tests it with streaming clients (``quillgpt.serve.load_test``).
"""

from __future__ import annotations

import argparse
import sys

from quillgpt import argtypes, speed
from quillgpt.argtypes import bounded
from quillgpt.commands.common import add_tokenizer_flags
from quillgpt.config import preset
from quillgpt.data import TokenizerChoice
from quillgpt.errors import ConfigError
from quillgpt.serve import load_test


def add_bench_command(commands: argparse._SubParsersAction) -> None:
    bench = commands.add_parser("bench", help="measure speed side by side (prints ratios)")
    bench.add_argument("what", choices=["train", "sample", "prepare", "serve"])
    bench.add_argument("--preset", default="seed-gpt", help="model/batch shape to measure (default seed-gpt)")
    bench.add_argument("--device", default="cpu", help="cpu, cuda, mps or auto (default cpu)")
    bench.add_argument("--steps", type=argtypes.count, default=5, help="timed training steps per variant")
    bench.add_argument("--warmup", type=argtypes.whole(0), default=2, help="untimed steps first (compile happens here)")
    bench.add_argument("--batch-size", type=argtypes.whole(1, 4096), default=None,
                       help="override the preset's batch size")
    bench.add_argument("--new-tokens", type=argtypes.count, default=1000, help="tokens to sample")
    bench.add_argument("--corpus", default="english-novels", help="prepare: a registered corpus to prepare")
    bench.add_argument("--text", nargs="+", metavar="PATH", help="prepare: your own text instead of --corpus")
    bench.add_argument("--data", help="prepare: where the corpus file is, if not in the usual places")
    add_tokenizer_flags(bench)
    bench.add_argument("run_dir", nargs="?", help="serve: the run to serve")
    bench.add_argument("--clients", type=bounded(int, 1, 4096), default=32, help="serve: concurrent streaming clients")
    bench.add_argument("--requests", type=bounded(int, 1, 1_000_000), default=200, help="serve: requests in all")
    bench.add_argument("--tokens-per-request", type=bounded(int, 1, 1_000_000), default=64,
                       help="serve: max_tokens of each request")
    bench.add_argument("--time-limit", type=bounded(float, 0.001, 7 * 86400), default=600.0,
                       help="serve: give up after this many seconds")
    bench.add_argument("--checkpoint", default="latest", help="serve: latest or best")
    bench.set_defaults(func=cmd_bench)


def cmd_bench(args: argparse.Namespace) -> int:
    if args.what == "serve":
        return cmd_bench_serve(args)
    if args.what == "prepare":
        choice = TokenizerChoice(args.tokenizer or "char", args.vocab_size)
        choice.validate()
        result = speed.bench_prepare(args.corpus, args.text, choice, args.data)
        print(speed.format_prepare_table(result))
        return 0
    preset(args.preset)  # unknown preset: one clear line
    if args.what == "sample":
        if args.new_tokens < 1:
            raise ConfigError(f"--new-tokens must be >= 1, got {args.new_tokens}")
        rows = speed.bench_sample(args.preset, args.new_tokens, args.device)
        print(speed.format_sample_table(rows, args.preset, args.device))
    else:
        if args.steps < 1 or args.warmup < 0:
            raise ConfigError("--steps must be >= 1 and --warmup >= 0")
        result = speed.bench_train(args.preset, args.steps, args.warmup, args.device, args.batch_size,
                                   progress=lambda line: print(line, file=sys.stderr))
        print(speed.format_train_table(result))
    return 0


def cmd_bench_serve(args: argparse.Namespace) -> int:
    if not args.run_dir:
        raise ConfigError("quill bench serve needs a run directory: quill bench serve RUN_DIR")
    spec = load_test.BenchSpec(run_dir=args.run_dir, clients=args.clients, requests=args.requests,
                               max_tokens=args.tokens_per_request, time_limit_s=args.time_limit,
                               checkpoint=args.checkpoint)
    spec.validate()
    # load_test.bench_serve looked up at call time: tests replace it to check the flags alone
    report = load_test.bench_serve(spec, progress=lambda line: print(line, file=sys.stderr, flush=True))
    print(load_test.format_report(report))
    return 0
