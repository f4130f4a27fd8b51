"""Arithmetic problems as the trainer's data, so a task run reuses the one training loop.

``ArithmeticDataset`` offers what ``Trainer`` asks of a prepared corpus (``data.TrainingData``):
a tokenizer, batch samplers for the train and val splits, and what to record in data.json.
"train" is the fixed training set (``train_examples`` problems drawn with ``data_seed``) or,
with ``train_examples`` 0, fresh problems every batch; "val" is the held-out set
(``eval_examples`` test-split problems drawn with ``eval_seed``), so the val loss is the loss
on problems the model never trains on.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from quillgpt.config import ArithmeticConfig, RunConfig
from quillgpt.data import TokenDataset, TrainingData, resolve_dataset
from quillgpt.errors import ConfigError, DataError
from quillgpt.tasks.arithmetic import ALPHABET, BASE_ALPHABET, Problem, ProblemBatches, problems, sample_text
from quillgpt.tokenizers import CharTokenizer, Tokenizer


def arithmetic_tokenizer(fmt: str) -> CharTokenizer:
    """One token per character of the arithmetic alphabet, ids in ``ALPHABET`` order (the
    place-hint letters only for the hinted format, which alone uses them)."""
    return CharTokenizer(list(ALPHABET if fmt == "hinted" else BASE_ALPHABET))


def extreme_problems(ops: str, digits: int) -> list[Problem]:
    """Problems with the longest samples (largest operands, both orders), for the block size check."""
    big, one = 10**digits - 1, 1
    ten = 10 ** (digits - 1)
    return [Problem(a, op, b) for op in ops for a in (big, one, ten, ten + 1) for b in (big, one, ten, ten + 1)]


class ArithmeticDataset:
    """The training and held-out problems of one arithmetic task."""

    def __init__(self, config: ArithmeticConfig, position: str = "learned") -> None:
        if not config.enabled:
            raise ConfigError("no arithmetic task given: pass --task add|sub|mul|div|calc")
        config.validate()
        self.config = dataclasses.replace(config)  # a copy: the sets must not change under us
        self.position = position  # the model's: abacus or coupled need position ids with each batch
        self.tokenizer = arithmetic_tokenizer(config.format)
        try:
            self.train_pool = (problems(config.ops, config.digits, config.train_examples, config.data_seed, "train")
                               if config.train_examples else None)
            self.val_pool = problems(config.ops, config.digits, config.eval_examples, config.eval_seed, "test")
        except ValueError as exc:
            raise ConfigError(f"{exc} (--train-examples / --eval-examples)") from None

    @property
    def folder(self) -> Path:  # named in messages the way a corpus folder is
        return Path(f"arithmetic:{self.config.task}")

    @property
    def source_sha256(self) -> str:
        """Identifies the problems: the same config draws the same sets (``pack`` only lays them out)."""
        fields = {k: v for k, v in dataclasses.asdict(self.config).items() if k != "pack"}
        text = json.dumps(fields, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()

    def longest_sample(self) -> int:
        candidates = [*(self.train_pool or []), *self.val_pool,
                      *extreme_problems(self.config.ops, self.config.digits)]
        return max(len(sample_text(p, self.config.format)) for p in candidates) - 1  # inputs drop the last char

    def check_block_size(self, block_size: int) -> None:
        need = self.longest_sample()
        if block_size < need:
            raise DataError(f"{self.config.digits}-digit {self.config.task} in the {self.config.format} format needs "
                            f"block_size >= {need}, got {block_size}: pass --block-size {need}")

    def batches(self, split: str, batch_size: int, block_size: int, seed: int,
                device: str | torch.device = "cpu") -> ProblemBatches:
        pool = self.val_pool if split == "val" else self.train_pool
        # a position scheme's random offsets are for training only: the val loss is measured as tested
        return ProblemBatches(self.config.format, batch_size, block_size, seed, device, pool=pool,
                              ops=self.config.ops, digits=self.config.digits, pack=self.config.pack,
                              position=self.position, offsets=split == "train")

    def info(self) -> dict[str, Any]:
        return {"dataset": str(self.folder), "arithmetic": dataclasses.asdict(self.config),
                "source": {"sha256": self.source_sha256}}

    def bits_per_char(self, loss: float, split: str = "val") -> float | None:
        return None  # the loss counts answer tokens only: bits per character of text does not apply


def open_dataset(config: RunConfig, data: str | None = None, folder: str | None = None,
                 base_tokenizer: Tokenizer | None = None) -> TrainingData:
    """The data a run trains on: its arithmetic task, its conversations (their tokenizer extends
    ``base_tokenizer``, the finetuned model's or the run's own), or the prepared corpus ``folder``
    (default: ``config.train.dataset``, found or prepared through ``resolve_dataset``)."""
    if config.arithmetic.enabled:
        return ArithmeticDataset(config.arithmetic, config.model.position)
    if config.chat.enabled:
        from quillgpt.posttrain.sft import ChatDataset  # posttrain builds on tasks, not the other way

        return ChatDataset(config.chat, base_tokenizer)
    return TokenDataset(resolve_dataset(folder or config.train.dataset, data))
