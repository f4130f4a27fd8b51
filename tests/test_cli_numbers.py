"""Every numeric flag of every quill command, swept with 0, -1, an absurd size, NaN and infinity.

The parsers are walked, so a flag added later is swept too. A value either ends in one line
on stderr naming the flag and exit code 2, before any work starts, or it is listed in
``ACCEPTED`` with the reason it is a real setting (a seed of 0, 0 meaning "off", a long run
that Ctrl-C stops). Accepted values are not run: they would start real work.
"""

from __future__ import annotations

import argparse
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from quillgpt.cli import build_parser, main

HUGE = "1000000000000"
INT_VALUES = ("0", "-1", HUGE)
FLOAT_VALUES = (*INT_VALUES, "nan", "inf")

LONG = (HUGE,)  # a long run or a long reply: the user's choice, stopped with Ctrl-C
OFF = ("0",)  # 0 turns the feature off, or is the natural lower end (a seed, a share)
SEED = OFF
ANY_FINITE = ("0", "-1", HUGE)
# quill sft takes quill train's config flags, with the same meanings.
TRAINING: dict[str, tuple[str, ...]] = {
    "--stop-at": LONG,  # past max_iters: train to the end
    "--dropout": OFF,
    "--max-iters": LONG,
    "--eval-interval": LONG,  # evaluate only at the end
    "--log-interval": LONG,
    "--lr": LONG,  # diverges: the trainer stops at the first non-finite loss, in one line
    "--muon-lr": LONG,
    "--warmup-iters": OFF + LONG,
    "--weight-decay": OFF + LONG,  # well defined, only unwise
    "--beta1": OFF,
    "--beta2": OFF,
    "--grad-clip": OFF + LONG,
    "--save-every": OFF + LONG,  # 0: at every eval
    "--keep-last": LONG,  # keep every checkpoint
    "--sample-chars": OFF,
    "--max-minutes": OFF + LONG,
    "--decay-frac": OFF,  # wsd without a decay: lr held to the end
    "--train-examples": OFF,  # fresh problems every batch
    "--chat-examples": OFF,  # fresh questions every batch
    "--chat-worked": OFF,
}
# (command, flag) -> values that are valid settings, each with its reason in the comment.
ACCEPTED: dict[tuple[str, str], tuple[str, ...]] = {
    **{(cmd, flag): values for cmd in ("train", "sft") for flag, values in TRAINING.items()},
    **{(cmd, "--seed"): SEED for cmd in ("train", "sft", "sample", "chat", "lesson", "seq2seq", "zoo", "rl", "dpo",
                                         "reward train", "rft")},
    **{(cmd, flag): SEED for cmd in ("train", "sft", "task eval", "rl", "dpo", "rft")
       for flag in ("--eval-seed", "--data-seed", "--chat-seed")},
    ("task eval", "--temperature"): LONG,  # pass@k at a flat distribution: valid, only unwise
    ("task eval", "--sample-seed"): SEED,
    ("report", "--n"): OFF,  # 0: the card without held-out scoring
    ("sample", "--max-new-tokens"): OFF + LONG,  # 0: print the prompt alone
    ("sample", "--temperature"): LONG,  # a flat distribution
    ("sample", "--top-k"): LONG,  # more than the vocabulary: all of it
    ("chat", "--max-new-tokens"): LONG,  # a reply is capped at half the context anyway
    ("chat", "--temperature"): LONG,
    ("chat", "--top-k"): LONG,
    ("eval", "--max-tokens"): LONG,  # more than there are: all of them
    ("bench", "--steps"): LONG,
    ("bench", "--warmup"): OFF + LONG,
    ("bench", "--new-tokens"): LONG,
    ("lesson", "--steps"): LONG,
    ("lesson", "--lr"): LONG,
    ("attention", "--layer"): OFF,
    ("attention", "--head"): OFF,
    ("seq2seq", "--steps"): LONG,
    ("seq2seq", "--lr"): LONG,
    ("rl", "--steps"): LONG,
    ("rl", "--top-k"): OFF + LONG,  # 0: the full distribution
    ("rl", "--warmup"): OFF + LONG,
    ("rl", "--lr"): LONG,
    ("rl", "--temperature"): LONG,
    ("rl", "--kl-coef"): OFF + LONG,
    ("rl", "--kl-target"): OFF + LONG,  # 0: a fixed kl_coef
    ("rl", "--kl-horizon"): LONG,
    ("rl", "--gamma"): OFF,
    ("rl", "--lam"): OFF,
    ("rl", "--vf-coef"): OFF + LONG,
    ("rl", "--value-clip"): LONG,
    ("rl", "--value-lr"): LONG,
    ("rl", "--unfinished-reward"): ANY_FINITE,  # any finite reward is a reward
    ("rl", "--grad-clip"): OFF + LONG,
    ("rl", "--eval-interval"): LONG,
    ("rl", "--clip-high"): OFF,  # 0: the same as --clip
    ("rl", "--dynamic-sampling"): OFF,  # 0: off
    **{(cmd, flag): OFF for cmd in ("dpo", "reward train") for flag in ("--worked", "--cross-style", "--slips")},
    ("dpo", "--steps"): LONG,
    ("dpo", "--lr"): LONG,
    ("dpo", "--beta"): LONG,
    ("dpo", "--eval-interval"): LONG,
    ("reward train", "--steps"): LONG,
    ("reward train", "--lr"): LONG,
    ("reward train", "--weight-decay"): OFF + LONG,
    ("reward train", "--warmup"): OFF + LONG,
    ("reward train", "--eval-interval"): LONG,
    ("reward train", "--policy-pairs"): OFF,
}


def numeric_flags(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> Iterator[tuple[str, str, bool]]:
    """(command, flag, takes a float) for every option that parses a number, in every subcommand."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from numeric_flags(sub, (*path, name))
        elif action.option_strings and action.nargs is None and not action.choices:
            kind = getattr(action.type, "__name__", "")
            if action.metavar in ("INT", "FLOAT") or kind in ("int", "float", "whole", "real", "parse"):
                is_float = action.metavar == "FLOAT" or kind in ("float", "real")
                yield " ".join(path), action.option_strings[-1], is_float


def positionals(parser: argparse.ArgumentParser, command: str) -> list[str]:
    sub = parser
    for word in command.split():
        sub = next(a for a in sub._actions if isinstance(a, argparse._SubParsersAction)).choices[word]
    return [a.dest for a in sub._actions if not a.option_strings and not isinstance(a, argparse._SubParsersAction)
            and a.nargs != "?"]


PARSER = build_parser()
CASES = [(command, flag, value) for command, flag, is_float in numeric_flags(PARSER)
         for value in (FLOAT_VALUES if is_float else INT_VALUES) if value not in ACCEPTED.get((command, flag), ())]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny text run, arithmetic run and chat (SFT) run, for the commands that load one."""
    root = tmp_path_factory.mktemp("numbers")
    text, task, chat = root / "text", root / "add", root / "chat"
    small = ["--max-iters", "2", "--eval-iters", "1", "--batch-size", "4", "--no-progress", "--sample-chars", "0"]
    assert main(["train", "--preset", "tiny", "--block-size", "64", "--out-dir", str(text), *small]) == 0
    assert main(["train", "--preset", "add3-reversed", "--n-layer", "1", "--n-embd", "16", "--n-head", "2",
                 "--eval-examples", "20", "--out-dir", str(task), *small]) == 0
    assert main(["sft", str(text), "--chat-val", "20", "--out-dir", str(chat), *small]) == 0
    return {"text": text, "task": task, "chat": chat}


def argv_for(command: str, flag: str, value: str, runs: dict[str, Path], tmp: Path) -> list[str]:
    # task eval of a chat run is the path an outside review found raising a traceback for --n 0
    run = runs["task" if command == "calc" else
               "chat" if command in ("task eval", "chat", "reward train", "rl", "dpo", "rft", "report") else "text"]
    # quill bench's flags each belong to one of its benchmarks
    bench = {"--vocab-size": "prepare", "--new-tokens": "sample", "--clients": "serve", "--requests": "serve",
             "--tokens-per-request": "serve", "--time-limit": "serve"}.get(flag, "train")
    fill = {"run_dir": str(run), "run": str(run), "rm_dir": str(run), "what": bench, "lesson": "bigram",
            "algorithm": "grpo", "expression": "1+2", "folder": str(run)}
    extra = {"train": ["--preset", "tiny", "--max-iters", "1", "--out-dir", str(tmp / "out"), "--no-progress"],
             "sft": ["--max-iters", "1", "--out-dir", str(tmp / "out"), "--no-progress"],
             "prepare": ["shakespeare", "--out", str(tmp / "data"), "--tokenizer", "bpe"],
             "bench": ["--tokenizer", "bpe"] if bench == "prepare" else [],
             "zoo": ["--out", str(tmp / "zoo")],
             "attention": ["--text", "ROMEO", "--out", str(tmp / "attn.png")]}.get(command, [])
    return [*command.split(), *(fill[name] for name in positionals(PARSER, command)), *extra, f"{flag}={value}"]


class TookTooLongError(Exception):
    pass


def test_the_sweep_finds_the_flags() -> None:
    commands = {command for command, _, _ in CASES}
    assert {"train", "sample", "sft", "rl", "dpo", "reward train", "serve", "task eval", "zoo"} <= commands
    assert len(CASES) > 300


@pytest.mark.slow
@pytest.mark.parametrize("command,flag,value", CASES)
def test_a_bad_number_is_one_line_and_exit_2(command: str, flag: str, value: str, runs: dict[str, Path],
                                             tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    def give_up(*_: object) -> None:
        raise TookTooLongError(f"quill {command} {flag}={value} was not refused: it started work")

    previous = signal.signal(signal.SIGALRM, give_up)
    signal.alarm(30)
    try:
        code = main(argv_for(command, flag, value, runs, tmp_path))
    except SystemExit as exc:
        code = exc.code
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(err) == 1, f"{command} {flag}={value}: exit {code}, stderr {err}"
    name = flag.removeprefix("--")
    assert name in err[0] or name.replace("-", "_") in err[0], err[0]
