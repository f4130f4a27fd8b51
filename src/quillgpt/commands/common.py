"""The parser pieces every ``quill`` command group shares.

- ``OneLineParser``: a usage error is one line on stderr and exit code 2;
- one flag per field of a config dataclass (``--n-embd`` for ``ModelConfig.n_embd``), and the
  values given read back into their types (``dataclass_overrides``);
- the flags of commands that load a trained run, and of commands that make a tokenizer;
- ``print_sample``: stream a model's sample to stdout (quill sample, and after quill train).
The numeric argparse types (``argtypes.count``, ``argtypes.seed``, ...) are in ``quillgpt.argtypes``.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any, NoReturn

import torch

from quillgpt import argtypes
from quillgpt.config import SECTIONS, field_types, parse_value
from quillgpt.errors import ConfigError
from quillgpt.sample import check_sampling, stream
from quillgpt.tokenizers import KINDS, StreamDecoder

EXIT_USAGE = 2
NOT_FLAGS = {"vocab_size"}  # set from the tokenizer, never by hand
REPEATABLE = {"log_to"}  # comma lists: --log-to tensorboard --log-to wandb means tensorboard,wandb


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
    """A flag for every field of every RunConfig section (model, train, arithmetic, chat)."""
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
        elif name in REPEATABLE:
            group.add_argument(flag, dest=f"{section}.{name}", metavar="A,B", action="append", default=None)
        else:
            group.add_argument(flag, dest=f"{section}.{name}", metavar=kind.__name__.upper(), default=None)


def dataclass_overrides(args: argparse.Namespace, cls: type, section: str) -> dict[str, Any]:
    """The fields of ``cls`` given on the command line, parsed into their types."""
    out: dict[str, Any] = {}
    for name, kind in field_types(cls).items():
        value = getattr(args, f"{section}.{name}", None)
        if isinstance(value, list):  # a REPEATABLE flag given one or more times
            value = ",".join(value)
        if value is not None:
            out[name] = value if kind is bool else parse_value(name, value, kind)
    return out


def config_overrides(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """The config fields given on the command line, parsed into their types."""
    return {section: dataclass_overrides(args, cls, section) for section, cls in SECTIONS.items()}


# ---------------------------------------------------------------------------------------
# Flags several commands share
# ---------------------------------------------------------------------------------------


def add_run_flags(parser: argparse.ArgumentParser) -> None:
    """--checkpoint and --device, for commands that load a trained run."""
    parser.add_argument("--checkpoint", default="latest", help="latest or best")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, mps or auto (default cpu)")


def add_tokenizer_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tokenizer", choices=KINDS, help="char (default) or bpe (byte-level, any text)")
    # --vocab-size: its range is checked where the tokenizer is made
    parser.add_argument("--vocab-size", type=argtypes.whole(None), metavar="N",
                        help="bpe: tokens in the vocabulary, with 256 bytes and 6 special tokens (e.g. 2048)")


def new_run_dir(given: str, base: str, suffix: str, overwrite: bool) -> str:
    """The output run directory of a command that starts from a run (default: beside it, with a suffix:
    runs/cpu-small -> runs/cpu-small-sft), so the next command can name it; never reuses a run silently."""
    out = Path(given) if given else Path(base).parent / f"{Path(base).name}-{suffix}"
    if (out / "config.json").exists() and not overwrite:
        raise ConfigError(f"{out} already holds a run: choose another --out-dir, or pass --overwrite to replace it")
    return str(out)


def print_sample(model: torch.nn.Module, tokenizer: Any, prompt: str, max_new_tokens: int,
                 temperature: float, top_k: int | None, top_p: float | None, seed: int | None,
                 device: torch.device, stop_at_end: bool = True) -> None:
    """Stream a sample to stdout, one token as soon as it is drawn.

    With ``stop_at_end`` it ends at ``<|endoftext|>`` (where the tokenizer has it), the end of a
    document, as a trained model says so; stderr says why it stopped short of max_new_tokens.
    """
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
    end = tokenizer.special_ids.get("<|endoftext|>") if stop_at_end else None
    drawn = 0
    for token in stream(model, idx, max_new_tokens, temperature, top_k, top_p, generator):
        if token[0].item() == end:
            break
        drawn += 1
        sys.stdout.write(decoder.feed(token[0].tolist()))
        sys.stdout.flush()
    sys.stdout.write(decoder.flush() + "\n")
    if drawn < max_new_tokens:
        print(f"(stopped at <|endoftext|> after {drawn} tokens; --no-stop-at-end samples past it)", file=sys.stderr)
