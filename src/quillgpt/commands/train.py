"""``quill train``: a preset (or a JSON config) with any field changed by a flag, a resumed run,
or a finetune from a trained run's weights (--init-from). The config is built here; the training
itself is ``commands.training.run_training``, which ``quill sft`` calls with its own config.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from quillgpt import argtypes
from quillgpt.commands.common import add_config_flags, config_overrides
from quillgpt.commands.training import DEFAULT_PRESET, run_training
from quillgpt.config import PRESETS, RunConfig, preset
from quillgpt.errors import ConfigError
from quillgpt.pretrained import init_model_config, load_init


def add_train_command(commands: argparse._SubParsersAction) -> None:
    train = commands.add_parser("train", help="train a model (every config field is a flag)")
    train.add_argument("--preset", help=f"one of {', '.join(PRESETS)} (default {DEFAULT_PRESET})")
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


def cmd_train(args: argparse.Namespace) -> int:
    overrides = config_overrides(args)
    progress = not args.no_progress
    if args.resume:
        if args.config or args.preset or args.init_from:
            raise ConfigError("--resume continues a run with its own config and weights: drop --preset/--config/"
                              "--init-from")
        return run_training(None, resume=Path(args.resume), overrides=overrides, progress=progress,
                            stop_at=args.stop_at)
    name = args.preset or DEFAULT_PRESET
    config = load_config_file(args.config) if args.config else preset(name)
    init = load_init(args.init_from) if args.init_from else None
    if init:  # the model (shape and weights) comes from the pretrained run
        config.model = init_model_config(init, overrides["model"])
    config = config.replace(overrides)  # after the swap: a model flag is checked against the model trained
    config.validate()
    return run_training(config, Path(args.config).stem if args.config else name, init=init, data=args.data,
                        overwrite=args.overwrite, progress=progress, stop_at=args.stop_at)


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
