"""Start a run from a trained model: ``quill train --init-from RUN_DIR`` (pretrain, then finetune).

The new run takes the weights (and so the model shape) of RUN_DIR's best checkpoint (its
latest if it has no best), and nothing else: a fresh optimizer, a learning-rate schedule
that starts again at step 0 with its own warmup, and its own dataset. The dataset must be
tokenized with the very same tokenizer, or token ids would mean other things than the
weights learned; ``quill prepare ... --tokenizer-from RUN_DIR`` makes such a dataset. One
exception: a character tokenizer extended with new tokens after the old ones (``quill sft``
adds the chat tokens and any new characters); the new tokens get fresh embedding rows.

``init.json`` in the new run records where the weights came from, so a run stopped before
its first checkpoint restarts from them again.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from quillgpt.checkpoint import LoadedRun, load_run
from quillgpt.config import ModelConfig
from quillgpt.data import TrainingData
from quillgpt.errors import CheckpointError, ConfigError
from quillgpt.fsutil import atomic_write_json
from quillgpt.tokenizers import CharTokenizer, Tokenizer

# Fields that decide the shape of the weights; the rest (dropout, attention path) may change.
SHAPE_FIELDS = ("arch", "block_size", "n_layer", "n_head", "n_embd", "norm", "position", "activation", "tie_weights",
                "qk_norm", "qkv_bias", "head_bias", "context_len")
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


def extends(tokenizer: Tokenizer, base: Tokenizer) -> bool:
    """Whether ``tokenizer`` keeps every id of ``base`` and only adds tokens after them (as
    ``chat.with_chat_tokens`` does for a character tokenizer)."""
    if tokenizer == base:
        return True
    return (isinstance(tokenizer, CharTokenizer) and isinstance(base, CharTokenizer)
            and tokenizer.chars[: len(base.chars)] == base.chars
            and tokenizer.specials[: len(base.specials)] == base.specials)


def adapt_vocabulary(state: dict[str, torch.Tensor], base: Tokenizer, tokenizer: Tokenizer,
                     generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """GPT weights trained with ``base`` rearranged for ``tokenizer``, which extends it.

    A token both know keeps its embedding row and output row; a new token (a character the
    pretraining text never had, a chat token) gets fresh N(0, 0.02) rows, as at init.
    """
    if tokenizer == base:
        return state
    old_ids = {base.decode([i]): i for i in range(base.vocab_size)}
    keep = [(new, old_ids[tokenizer.decode([new])]) for new in range(tokenizer.vocab_size)
            if tokenizer.decode([new]) in old_ids]
    new_rows, old_rows = (torch.tensor(ids) for ids in zip(*keep, strict=True))
    out = dict(state)
    for name in ("token_embedding_table.weight", "lm_head.weight", "lm_head.bias"):
        if name not in state:  # lm_head.bias with --no-head-bias
            continue
        old = state[name]
        fresh = torch.zeros((tokenizer.vocab_size, *old.shape[1:]), dtype=old.dtype)
        if old.dim() == 2:
            fresh.normal_(0.0, 0.02, generator=generator)
        fresh[new_rows] = old[old_rows].to("cpu")
        out[name] = fresh
    return out


def check_same_tokenizer(dataset: TrainingData, init: LoadedRun) -> None:
    if not extends(dataset.tokenizer, init.tokenizer):
        raise ConfigError(
            f"the dataset {dataset.folder} ({dataset.tokenizer.describe()}) is not tokenized with the tokenizer of "
            f"{init.run_dir} ({init.tokenizer.describe()}): prepare it with that tokenizer, e.g. "
            f"quill prepare NAME --tokenizer-from {init.run_dir}")


def apply_init(trainer: Trainer, init: LoadedRun) -> None:
    """Copy the pretrained weights into a fresh Trainer's model (before its first step) and record it.

    Under DDP every rank loads the same weights, so the ranks stay identical.
    """
    if init.config.model.arch != "gpt" and init.tokenizer != trainer.dataset.tokenizer:
        raise ConfigError(f"--init-from {init.run_dir}: only a GPT can take new tokens; finetune a GPT")
    generator = torch.Generator().manual_seed(trainer.config.train.seed)  # the same new rows on every rank
    trainer.model.load_state_dict(adapt_vocabulary(init.model.state_dict(), init.tokenizer, trainer.dataset.tokenizer,
                                                   generator))
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
