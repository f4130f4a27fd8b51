"""``quill prepare`` (text -> a tokenized dataset) and the commands that read a trained run:
``quill sample``, ``quill eval``, ``quill info``."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from quillgpt import argtypes
from quillgpt.checkpoint import load_run
from quillgpt.commands.common import add_run_flags, add_tokenizer_flags, print_sample
from quillgpt.corpora import CORPORA
from quillgpt.data import (
    TokenDataset,
    TokenizerChoice,
    default_dataset_dir,
    load_tokenizer,
    prepare_corpus,
    prepare_source,
)
from quillgpt.device import resolve_device
from quillgpt.errors import ConfigError, SamplingError
from quillgpt.metrics import MetricsLog
from quillgpt.sample import check_sampling
from quillgpt.sources import resolve_text_source
from quillgpt.text_loss import eval_run, format_result


def add_run_commands(commands: argparse._SubParsersAction) -> None:
    """Add ``prepare``, ``sample``, ``eval`` and ``info`` to the ``quill`` subcommands."""
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


def add_sample_command(commands: argparse._SubParsersAction) -> None:
    sample = commands.add_parser("sample", help="generate text from a trained run")
    sample.add_argument("run_dir")
    sample.add_argument("--prompt", default="", help="text to continue (default: start from a newline)")
    sample.add_argument("--max-new-tokens", type=argtypes.whole(None), default=500)  # checked by check_sampling
    sample.add_argument("--temperature", type=float, default=1.0)
    sample.add_argument("--top-k", type=argtypes.whole(None), default=None)
    sample.add_argument("--top-p", type=float, default=None)
    sample.add_argument("--seed", type=argtypes.seed, default=None)
    add_run_flags(sample)
    sample.add_argument("--stop-at-end", action=argparse.BooleanOptionalAction, default=True,
                        help="end the sample at <|endoftext|>, the end of a document, when the tokenizer has it "
                             "(default: on)")
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


def add_info_command(commands: argparse._SubParsersAction) -> None:
    info = commands.add_parser("info", help="show a run's size, config and losses")
    info.add_argument("run_dir")
    info.set_defaults(func=cmd_info)


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
                 args.top_p, args.seed, device, stop_at_end=args.stop_at_end)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    device = resolve_device(args.device)
    result, run, what = eval_run(args.run_dir, args.text, args.dataset, args.checkpoint, device, args.batch_size,
                                 args.max_tokens)
    if args.json:
        print(json.dumps({"run": str(run.run_dir), "checkpoint": run.checkpoint.name, "step": run.step,
                          "on": what, **result.to_dict()}))
    else:
        print(format_result(result, run, what))
    return 0


def cmd_info(args: argparse.Namespace) -> int:
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
