"""The ``quill`` command line.

    quill prepare shakespeare | --text PATH...  tokenize a corpus into a dataset folder
    quill train --preset cpu-small [--n-embd 256 ...]   train (every config field is a flag)
    quill train --resume runs/cpu-small         continue a run where it stopped
    quill train --init-from RUN_DIR --dataset D  finetune a trained model on other data
    quill sample RUN_DIR --prompt "ROMEO:"      stream a sample
    quill eval RUN_DIR [--text FILE]            loss, bits per character and per byte
    quill info RUN_DIR                          parameters, config, last losses
    quill train --preset add3-reversed          teach a GPT 3-digit addition (also mul2-scratchpad, calc3)
    quill task eval RUN_DIR --n 2000            greedy exact-match accuracy on held-out problems
    quill calc RUN_DIR "123*45" --show-work     ask it one problem
    quill lesson attention|norms|bigram         the lecture's side roads, runnable (lessons/)
    quill attention RUN_DIR --text "ROMEO:"     heatmap of one head's attention weights
    quill seq2seq --task reverse                an encoder-decoder with cross-attention
    quill serve RUN_DIR [--port 8000]           OpenAI-compatible server, playground at /
    quill zoo --budget 5m                       bigram, MLP, CNN, RNN, LSTM, GRU, GPT: same time each

Problems with the user's input end in one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import torch

from quillgpt import argtypes, distributed
from quillgpt.checkpoint import LoadedRun, load_run, read_config
from quillgpt.config import PRESETS, SECTIONS, RunConfig, field_types, parse_value, preset
from quillgpt.corpora import CORPORA
from quillgpt.data import (
    TokenDataset,
    TokenizerChoice,
    default_dataset_dir,
    load_tokenizer,
    prepare_corpus,
    prepare_source,
)
from quillgpt.errors import ConfigError, QuillError, SamplingError
from quillgpt.export.cli import add_parsers as add_export_commands
from quillgpt.lessons.cli import add_lesson_commands
from quillgpt.posttrain.cli import add_posttrain_commands
from quillgpt.pretrained import apply_init, check_same_tokenizer, init_model_config, load_init
from quillgpt.resume import resume_trainer
from quillgpt.sample import check_sampling, stream
from quillgpt.serve.cli import add_serve_commands, cmd_bench_serve
from quillgpt.sources import resolve_text_source
from quillgpt.tasks.cli import add_task_commands
from quillgpt.tasks.dataset import open_dataset
from quillgpt.tokenizers import KINDS, StreamDecoder
from quillgpt.train import Trainer, resolve_device
from quillgpt.zoo_cli import add_zoo_command

EXIT_USAGE = 2
NOT_FLAGS = {"vocab_size"}  # set from the tokenizer, never by hand


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (problem + where to look), exit code 2."""

    def error(self, message: str) -> NoReturn:
        # argparse says "argument --steps: must be >= 1, got 0"; the flag reads better as the subject.
        message = re.sub(r"^argument (--[\w-]+)(?:/-\w)?: must be", r"\1 must be", message)
        self.exit(EXIT_USAGE, f"quill: error: {message} (see '{self.prog} --help')\n")


# ---------------------------------------------------------------------------------------
# Config flags: one per dataclass field
# ---------------------------------------------------------------------------------------


def add_config_flags(parser: argparse.ArgumentParser, skip: frozenset[str] | set[str] = frozenset()) -> None:
    for section, cls in SECTIONS.items():
        add_dataclass_flags(parser, cls, section, f"{section} config (default: the preset's value)",
                            NOT_FLAGS | set(skip))


def add_dataclass_flags(parser: argparse.ArgumentParser, cls: type, section: str, title: str,
                        skip: frozenset[str] | set[str] = NOT_FLAGS) -> None:
    """One flag per field of the config dataclass ``cls`` (``--n-embd`` for ``n_embd``)."""
    group = parser.add_argument_group(title)
    for name, kind in field_types(cls).items():
        if name in skip:
            continue
        flag = "--" + name.replace("_", "-")
        if kind is bool:
            group.add_argument(flag, dest=f"{section}.{name}", action=argparse.BooleanOptionalAction, default=None)
        else:
            group.add_argument(flag, dest=f"{section}.{name}", metavar=kind.__name__.upper(), default=None)


def dataclass_overrides(args: argparse.Namespace, cls: type, section: str) -> dict[str, Any]:
    """The fields of ``cls`` given on the command line, parsed into their types."""
    out: dict[str, Any] = {}
    for name, kind in field_types(cls).items():
        value = getattr(args, f"{section}.{name}", None)
        if value is not None:
            out[name] = value if kind is bool else parse_value(name, value, kind)
    return out


def config_overrides(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """The config fields given on the command line, parsed into their types."""
    return {section: dataclass_overrides(args, cls, section) for section, cls in SECTIONS.items()}


# ---------------------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------------------


def tokenizer_choice(args: argparse.Namespace) -> TokenizerChoice:
    if args.tokenizer_from:
        if args.tokenizer or args.vocab_size is not None:
            raise ConfigError("--tokenizer-from reuses a tokenizer as it is: drop --tokenizer and --vocab-size")
        existing = load_tokenizer(args.tokenizer_from)
        return TokenizerChoice(existing.kind, existing=existing, existing_from=args.tokenizer_from)
    return TokenizerChoice(args.tokenizer or "char", args.vocab_size)


def progress_line(message: str) -> None:
    # Only on a terminal: a script or test sees exactly the result line (or one error line).
    if sys.stderr.isatty():
        print(message, file=sys.stderr)


def cmd_prepare(args: argparse.Namespace) -> int:
    if args.text and args.name:
        raise ConfigError("give either a corpus name or --text FILE, not both")
    choice = tokenizer_choice(args)
    tic = time.perf_counter()
    if args.text:
        source = resolve_text_source(args.text)
        out = Path(args.out) if args.out else default_dataset_dir(source.name, choice)
        folder = prepare_source(source, out, tokenizer=choice, progress=progress_line)
    elif args.name:
        folder = prepare_corpus(args.name, args.out, args.data, choice, progress=progress_line)
    else:
        raise ConfigError(f"nothing to prepare: name a corpus ({', '.join(CORPORA)}) or pass --text FILE")
    dataset = TokenDataset(folder)
    split = dataset.meta["split"]
    tokens = split["train_tokens"] + split["val_tokens"]
    print(f"prepared {folder}: {dataset.tokenizer.kind} vocab {dataset.tokenizer.vocab_size}, "
          f"{split['train_tokens']:,} train / {split['val_tokens']:,} val tokens "
          f"({dataset.meta['source']['chars'] / max(1, tokens):.2f} characters per token, "
          f"{time.perf_counter() - tic:.1f} s)")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """Train (or resume); under torchrun every process runs this and rank 0 does the talking."""
    overrides = config_overrides(args)
    if args.resume:
        if args.config or args.preset_given or args.init_from:
            raise ConfigError("--resume continues a run with its own config and weights: drop --preset/--config/"
                              "--init-from")
        config, init = None, None
        device = overrides["train"].get("device") or read_config(Path(args.resume)).train.device
    else:
        base = load_config_file(args.config) if args.config else preset(args.preset)
        config = base.replace(overrides)
        init = load_init(args.init_from) if args.init_from else None
        if init:  # the model (shape and weights) comes from the pretrained run
            config.model = init_model_config(init, overrides["model"])
        config.validate()
        device = config.train.device
    dist = distributed.setup(device)
    try:
        code = _train(args, overrides, config, dist, init)
        # All ranks finish before the group closes: gloo aborts a rank whose peer has already left.
        dist.barrier()
        return code
    finally:
        distributed.teardown()


def _train(args: argparse.Namespace, overrides: dict[str, dict[str, Any]], config: RunConfig | None,
           dist: distributed.Distributed, init: LoadedRun | None = None) -> int:
    say = print if dist.is_main else _quiet
    if config is None:
        trainer = resume_trainer(Path(args.resume), overrides, progress=not args.no_progress, dist=dist)
        say(f"resuming {trainer.run_dir} from step {trainer.step}")
    else:
        dataset = open_dataset(config, args.data, base_tokenizer=init.tokenizer if init else None)
        if init:  # before the run directory is chosen (and, with --overwrite, cleared)
            check_same_tokenizer(dataset, init)
        # Rank 0 picks (and, with --overwrite, clears) the run directory; the others follow.
        run_dir = dist.broadcast(choose_run_dir(config, args) if dist.is_main else None)
        trainer = Trainer(config, dataset, run_dir, progress=not args.no_progress, dist=dist)
        if init:
            apply_init(trainer, init)
            say(f"initialised from {init.run_dir} ({init.checkpoint.name}); fresh optimizer and schedule")
        processes = f" x {dist.world_size} processes" if dist.enabled else ""
        say(f"training {args.preset}: {trainer.model.num_parameters():,} parameters on "
            f"{trainer.device}{processes} ({str(trainer.dtype).removeprefix('torch.')}), run dir {run_dir}")
    result = trainer.train(stop_at=args.stop_at)
    if not dist.is_main:
        return 130 if result.interrupted == "SIGINT" else 143 if result.interrupted else 0
    arithmetic, chat = trainer.config.arithmetic.enabled, trainer.config.chat.enabled
    print(summarize(result, next_step=f"quill task eval {result.run_dir}" if arithmetic else
                    f"quill chat {result.run_dir}" if chat else
                    f"quill sample {result.run_dir} --prompt \"ROMEO:\" --max-new-tokens 500"))
    if result.interrupted:
        print(f"\ninterrupted by {result.interrupted} at step {trainer.step}: checkpoint saved in "
              f"{trainer.run_dir}; continue with: quill train --resume {trainer.run_dir}", file=sys.stderr)
        return 130 if result.interrupted == "SIGINT" else 143
    if arithmetic:
        print_task_accuracy(trainer)
    elif chat and trainer.config.chat.builtin:
        print_chat_accuracy(trainer)
    elif trainer.config.train.sample_chars:
        print(f"\n--- sample ({trainer.config.train.sample_chars} tokens) ---")
        print_sample(trainer.model, trainer.dataset.tokenizer, "", trainer.config.train.sample_chars,
                     temperature=1.0, top_k=None, top_p=None, seed=trainer.config.train.seed, device=trainer.device)
    return 0


def _quiet(*args: object, **kwargs: object) -> None:
    """``print`` for ranks other than 0, which keep quiet."""


def load_config_file(path: str) -> RunConfig:
    """A typed JSON config (same shape as a run's config.json); never executed."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"config file not found: {file} (check the path)")
    try:
        data = json.loads(file.read_text())
    except (UnicodeDecodeError, ValueError) as exc:
        raise ConfigError(f"{file} is not valid JSON ({exc}): fix the file") from None
    if isinstance(data, dict):
        data = {k: v for k, v in data.items() if k not in ("format_version", "quillgpt_version")}
    try:
        return RunConfig.from_dict(data)
    except ConfigError as exc:
        raise ConfigError(f"{file}: {exc}") from None


def choose_run_dir(config: RunConfig, args: argparse.Namespace) -> Path:
    """The run directory; never silently reuses one that holds a run."""
    if config.train.out_dir:
        run_dir = Path(config.train.out_dir)
        if (run_dir / "config.json").exists() and not args.overwrite:
            raise ConfigError(f"{run_dir} already holds a run: continue it with --resume {run_dir}, "
                              "choose another --out-dir, or pass --overwrite to start over")
        if args.overwrite:
            _clear_run_dir(run_dir)
        return run_dir
    base = Path("runs") / (Path(args.config).stem if args.config else args.preset)
    run_dir, n = base, 1
    while (run_dir / "config.json").exists():  # keep earlier runs: runs/tiny, runs/tiny-2, ...
        n += 1
        run_dir = base.with_name(f"{base.name}-{n}")
    return run_dir


def _clear_run_dir(run_dir: Path) -> None:
    for name in ("checkpoints", "latest.json", "best.json", "metrics.jsonl", "loss.png"):
        path = run_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def print_task_accuracy(trainer: Trainer, n: int = 500) -> None:
    """Exact match on (up to) ``n`` problems of the held-out val set, after training."""
    from quillgpt.tasks.evaluate import Report, attempt_all

    held_out = trainer.dataset.val_pool[:n]
    report = Report(attempt_all(trainer.model, held_out, trainer.config.arithmetic.format, trainer.device))
    print("\n" + report.format(f"held-out accuracy ({len(held_out)} problems of the val set)"))


def print_chat_accuracy(trainer: Trainer, n: int = 500) -> None:
    """Format and exact match of greedy replies to (up to) ``n`` held-out questions, after SFT."""
    from quillgpt.posttrain.evaluate import ChatReport, answer_all

    held_out = trainer.dataset.val_questions[:n]
    report = ChatReport(answer_all(trainer.model, trainer.dataset.tokenizer, held_out))
    print("\n" + report.format(f"held-out replies ({len(held_out)} questions of the val set)"))


def summarize(result: Any, next_step: str = "") -> str:
    def fmt(x: float | None) -> str:
        return "n/a" if x is None else f"{x:.4f}"

    bpc = f" ({result.val_bpc:.4f} bits/char)" if getattr(result, "val_bpc", None) else ""
    return (f"\ndone: {result.steps:,} steps in {result.seconds:.1f} s ({result.eval_seconds:.1f} s of it in evals); "
            f"final train loss {fmt(result.train_loss)}, "
            f"val loss {fmt(result.val_loss)}{bpc}; best val {fmt(result.best_val_loss)} at step {result.best_step}\n"
            f"run dir: {result.run_dir} (loss curve: {result.run_dir / 'loss.png'})"
            + (f"\nnext:    {next_step}" if next_step else ""))


def print_sample(model: torch.nn.Module, tokenizer: Any, prompt: str, max_new_tokens: int,
                 temperature: float, top_k: int | None, top_p: float | None, seed: int | None,
                 device: torch.device) -> None:
    """Stream a sample to stdout, one token as soon as it is drawn."""
    check_sampling(max_new_tokens, temperature, top_k, top_p)
    ids = tokenizer.encode(prompt) if prompt else tokenizer.start_ids()
    generator = torch.Generator(device=device)
    if seed is not None:
        generator.manual_seed(seed)
    else:
        generator.seed()
    idx = torch.tensor([ids], dtype=torch.long, device=device)
    sys.stdout.write(prompt)
    decoder = StreamDecoder(tokenizer)  # a BPE token may end inside a character
    for token in stream(model, idx, max_new_tokens, temperature, top_k, top_p, generator):
        sys.stdout.write(decoder.feed(token[0].tolist()))
        sys.stdout.flush()
    sys.stdout.write(decoder.flush() + "\n")


def cmd_sample(args: argparse.Namespace) -> int:
    check_sampling(args.max_new_tokens, args.temperature, args.top_k, args.top_p)
    device = resolve_device(args.device)
    run = load_run(args.run_dir, which=args.checkpoint, device=device)
    prompt_ids = run.tokenizer.encode(args.prompt)  # fail on unknown characters before printing anything
    block = run.config.model.block_size
    if len(prompt_ids) > block and not args.crop_prompt:
        raise SamplingError(f"the prompt is {len(prompt_ids)} tokens, longer than the model's context of {block}: "
                            f"shorten it, or pass --crop-prompt to keep only its last {block} tokens")
    print_sample(run.model, run.tokenizer, args.prompt, args.max_new_tokens, args.temperature, args.top_k,
                 args.top_p, args.seed, device)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from quillgpt.evaluate import eval_run, format_result

    device = resolve_device(args.device)
    result, run, what = eval_run(args.run_dir, args.text, args.dataset, args.checkpoint, device, args.batch_size,
                                 args.max_tokens)
    if args.json:
        print(json.dumps({"run": str(run.run_dir), "checkpoint": run.checkpoint.name, "step": run.step,
                          "on": what, **result.to_dict()}))
    else:
        print(format_result(result, run, what))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from quillgpt import bench

    if args.what == "serve":
        return cmd_bench_serve(args)
    if args.what == "prepare":
        choice = TokenizerChoice(args.tokenizer or "char", args.vocab_size)
        choice.validate()
        result = bench.bench_prepare(args.corpus, args.text, choice, args.data)
        print(bench.format_prepare_table(result))
        return 0
    preset(args.preset)  # unknown preset: one clear line
    if args.what == "sample":
        if args.new_tokens < 1:
            raise ConfigError(f"--new-tokens must be >= 1, got {args.new_tokens}")
        rows = bench.bench_sample(args.preset, args.new_tokens, args.device)
        print(bench.format_sample_table(rows, args.preset, args.device))
    else:
        if args.steps < 1 or args.warmup < 0:
            raise ConfigError("--steps must be >= 1 and --warmup >= 0")
        result = bench.bench_train(args.preset, args.steps, args.warmup, args.device, args.batch_size,
                                   progress=lambda line: print(line, file=sys.stderr))
        print(bench.format_train_table(result))
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from quillgpt.metrics import MetricsLog

    run = load_run(args.run_dir)
    print(f"run:        {run.run_dir}")
    print(f"parameters: {run.model.num_parameters():,}")
    print(f"checkpoint: {run.checkpoint.name} (step {run.step})")
    print(f"tokenizer:  {run.tokenizer.kind}, vocab {run.tokenizer.vocab_size}")
    if (run.run_dir / "init.json").is_file():
        init = json.loads((run.run_dir / "init.json").read_text())
        print(f"init from:  {init.get('run')} ({init.get('checkpoint')})")
    source_sha = str(run.data_info.get("source", {}).get("sha256"))
    print(f"data:       {run.data_info.get('dataset')} (sha256 {source_sha[:12]}...)")
    last = MetricsLog(run.run_dir / "metrics.jsonl").last_eval()
    if last:
        bpc = f" ({last['val_bpc']:.4f} bits/char)" if last.get("val_bpc") else ""
        print(f"last eval:  step {last['step']}: train {last['train_loss']:.4f}, val {last['val_loss']:.4f}{bpc}")
    best = run.trainer_state.get("best_val")
    if best is not None:
        print(f"best val:   {best:.4f} at step {run.trainer_state.get('best_step')}")
    print("config:")
    for section, values in run.config.to_dict().items():
        print(f"  {section}: " + ", ".join(f"{k}={v}" for k, v in values.items()))
    return 0


# ---------------------------------------------------------------------------------------
# Parser and entry point
# ---------------------------------------------------------------------------------------


def add_tokenizer_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tokenizer", choices=KINDS, help="char (default) or bpe (byte-level, any text)")
    # --vocab-size: its range is checked where the tokenizer is made
    parser.add_argument("--vocab-size", type=argtypes.whole(None), metavar="N",
                        help="bpe: tokens in the vocabulary, with 256 bytes and 6 special tokens (e.g. 2048)")


def add_run_flags(parser: argparse.ArgumentParser) -> None:
    """--checkpoint and --device, for commands that load a trained run."""
    parser.add_argument("--checkpoint", default="latest", help="latest or best")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, mps or auto (default cpu)")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="quill", description="Build, train and sample small GPT language models.")
    from quillgpt import __version__

    parser.add_argument("--version", action="version", version=f"quillgpt {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)

    prep = commands.add_parser("prepare", help="tokenize a corpus into train.bin/val.bin/meta.json")
    prep.add_argument("name", nargs="?", help=f"a registered corpus: {', '.join(CORPORA)}")
    prep.add_argument("--text", nargs="+", metavar="PATH",
                      help="your own UTF-8 text: files, folders of .txt files, or globs; gzip is read directly")
    prep.add_argument("--out", help="output folder (default: data/NAME, data/NAME-bpeV for bpe)")
    prep.add_argument("--data", help="where the named corpus file is, if not in the usual places")
    add_tokenizer_flags(prep)
    prep.add_argument("--tokenizer-from", metavar="PATH",
                      help="reuse the tokenizer of a run directory, a prepared dataset or a tokenizer.json "
                           "(needed to finetune a model on this data with --init-from)")
    prep.set_defaults(func=cmd_prepare)

    train = commands.add_parser("train", help="train a model (every config field is a flag)")
    train.add_argument("--preset", help=f"one of {', '.join(PRESETS)} (default cpu-small)")
    train.add_argument("--config", metavar="FILE", help="a JSON config (like a run's config.json) instead of a preset")
    train.add_argument("--resume", metavar="RUN_DIR", help="continue this run from its latest checkpoint")
    train.add_argument("--init-from", metavar="RUN_DIR",
                       help="start from this run's trained weights (best checkpoint) and model shape, with a "
                            "fresh optimizer and schedule; the dataset must use the same tokenizer")
    train.add_argument("--overwrite", action="store_true", help="start over in an --out-dir that holds a run")
    train.add_argument("--data", help="where the named corpus file is, if not in the usual places")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.add_argument("--stop-at", type=argtypes.count, metavar="STEP",
                       help="save a checkpoint and exit after this step (continue later with --resume)")
    add_config_flags(train)
    train.set_defaults(func=cmd_train)

    sample = commands.add_parser("sample", help="generate text from a trained run")
    sample.add_argument("run_dir")
    sample.add_argument("--prompt", default="", help="text to continue (default: start from a newline)")
    sample.add_argument("--max-new-tokens", type=argtypes.whole(None), default=500)  # checked by check_sampling
    sample.add_argument("--temperature", type=float, default=1.0)
    sample.add_argument("--top-k", type=argtypes.whole(None), default=None)
    sample.add_argument("--top-p", type=float, default=None)
    sample.add_argument("--seed", type=argtypes.seed, default=None)
    add_run_flags(sample)
    sample.add_argument("--crop-prompt", action="store_true",
                        help="allow a prompt longer than the context (the model sees its last block_size tokens)")
    sample.set_defaults(func=cmd_sample)

    evaluate = commands.add_parser("eval", help="loss, bits per character and per byte of a run on some text")
    evaluate.add_argument("run_dir")
    evaluate.add_argument("--text", nargs="+", metavar="PATH", help="evaluate on these files (default: a val split)")
    evaluate.add_argument("--dataset", help="the val split of this prepared dataset (default: the run's own)")
    add_run_flags(evaluate)
    evaluate.add_argument("--batch-size", type=argtypes.whole(1, 4096), default=32, help="windows per forward pass")
    evaluate.add_argument("--max-tokens", type=argtypes.count, default=None, help="only the first N tokens")
    evaluate.add_argument("--json", action="store_true", help="print one JSON object")
    evaluate.set_defaults(func=cmd_eval)

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
    bench.set_defaults(func=cmd_bench)

    add_task_commands(commands)
    add_lesson_commands(commands)
    add_posttrain_commands(commands)
    add_serve_commands(commands)
    add_zoo_command(commands)
    add_export_commands(commands)

    info = commands.add_parser("info", help="show a run's size, config and losses")
    info.add_argument("run_dir")
    info.set_defaults(func=cmd_info)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # a usage error (one line already printed), --help or --version
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    if args.command == "train":
        args.preset_given = args.preset is not None
        args.preset = args.preset or "cpu-small"
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
