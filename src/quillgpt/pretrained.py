"""Start a run from a trained model: ``quill train --init-from RUN_DIR`` (pretrain, then finetune).

The new run takes the weights (and so the model shape) of RUN_DIR's best checkpoint (its
latest if it has no best), and nothing else: a fresh optimizer, a learning-rate schedule
that starts again at step 0 with its own warmup, and its own dataset. The dataset must be
tokenized with the very same tokenizer, or token ids would mean other things than the
weights learned; ``quill prepare ... --tokenizer-from RUN_DIR`` makes such a dataset.

``init.json`` in the new run records where the weights came from, so a run stopped before
its first checkpoint restarts from them again.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from quillgpt.checkpoint import LoadedRun, load_run
from quillgpt.config import ModelConfig
from quillgpt.data import TokenDataset
from quillgpt.errors import CheckpointError, ConfigError
from quillgpt.fsutil import atomic_write_json

# Fields that decide the shape of the weights; the rest (dropout, attention path) may change.
SHAPE_FIELDS = ("arch", "block_size", "n_layer", "n_head", "n_embd", "norm", "position", "activation", "tie_weights",
                "qk_norm", "context_len")
INIT_FILE = "init.json"

if TYPE_CHECKING:
    from quillgpt.train import Trainer


def load_init(run_dir: str | Path) -> LoadedRun:
    """The trained run to start from: its best checkpoint, or its latest without a best."""
    run_dir = Path(run_dir)
    which = "best" if (run_dir / "best.json").is_file() else "latest"
    try:
        return load_run(run_dir, which=which)
    except CheckpointError as exc:
        raise CheckpointError(f"--init-from {run_dir}: {exc}") from None


def init_model_config(init: LoadedRun, overrides: dict[str, Any]) -> ModelConfig:
    """The pretrained run's model config, with only the fields that keep the weights' shape overridden."""
    model = init.config.model
    changed = [f"{name} is {getattr(model, name)!r} there, not {value!r}"
               for name, value in overrides.items() if name in SHAPE_FIELDS and getattr(model, name) != value]
    if changed:
        raise ConfigError(f"--init-from {init.run_dir} keeps the model of that run ({'; '.join(changed)}): "
                          "drop those flags, or train a new model without --init-from")
    return dataclasses.replace(model, **overrides)


def check_same_tokenizer(dataset: TokenDataset, init: LoadedRun) -> None:
    if dataset.tokenizer != init.tokenizer:
        raise ConfigError(
            f"the dataset {dataset.folder} ({dataset.tokenizer.describe()}) is not tokenized with the tokenizer of "
            f"{init.run_dir} ({init.tokenizer.describe()}): prepare it with that tokenizer, e.g. "
            f"quill prepare NAME --tokenizer-from {init.run_dir}")


def apply_init(trainer: Trainer, init: LoadedRun) -> None:
    """Copy the pretrained weights into a fresh Trainer's model (before its first step) and record it.

    Under DDP every rank loads the same weights, so the ranks stay identical.
    """
    trainer.model.load_state_dict(init.model.state_dict())
    if trainer.dist.is_main:
        atomic_write_json(trainer.run_dir / INIT_FILE, {
            "run": str(init.run_dir.resolve()), "checkpoint": init.checkpoint.name, "step": init.step,
            "tokenizer": init.tokenizer.describe()})


def reapply_init(trainer: Trainer) -> None:
    """For a run restarted from step 0: start from the recorded pretrained weights again, if any."""
    path = trainer.run_dir / INIT_FILE
    if not path.is_file():
        return
    try:
        record = json.loads(path.read_text())
        source = Path(record["run"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{path} is unreadable ({exc}): start the run again with --init-from") from None
    init = load_init(source)
    check_same_tokenizer(trainer.dataset, init)
    apply_init(trainer, init)
