"""Supervised finetuning (SFT): conversations as the trainer's data, loss on the assistant's tokens.

``ChatDataset`` offers what ``Trainer`` asks of its data (``data.TrainingData``), so SFT is the
one training loop with other batches: each row is one conversation, right-padded, whose
targets are IGNORE except where the next token is the assistant's (``chat.encode_conversation``).
A prompt token therefore gets no gradient (InstructGPT, Ouyang et al. 2022; nanochat's
``chat_sft`` masks the same way).

The data is a JSONL file (``{"messages": [...]}`` or ``{"prompt", "response"}`` per line), or
the built-in arithmetic questions (``tasks.questions``): fresh train-split questions every
batch (or a fixed set), and held-out questions of the val half for the val loss (the test half is
left for ``quill task eval``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
from pathlib import Path
from typing import Any

import torch

from quillgpt.chat import Encoded, encode_conversation, read_conversations, with_chat_tokens
from quillgpt.config import ChatConfig
from quillgpt.data import SeededSampler, to_device
from quillgpt.errors import ConfigError, DataError
from quillgpt.fsutil import sha256_file
from quillgpt.tasks.arithmetic import IGNORE, Problem
from quillgpt.tasks.questions import TEMPLATES, Question, alphabet, fresh_questions, questions
from quillgpt.tokenizers import Tokenizer


def conversation_rows(encoded: list[Encoded], block_size: int, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T) inputs and targets, one conversation per row, right-padded; untrained targets IGNORE."""
    longest = max(len(e.ids) for e in encoded) - 1
    if longest > block_size:
        raise DataError(f"a conversation needs {longest} positions but block_size is {block_size}: "
                        f"pass --block-size {longest} or shorten the conversations")
    x = torch.full((len(encoded), longest), pad_id, dtype=torch.long)
    y = torch.full((len(encoded), longest), IGNORE, dtype=torch.long)
    for row, e in enumerate(encoded):
        ids = torch.tensor(e.ids)
        x[row, : len(ids) - 1] = ids[:-1]
        targets = ids[1:].masked_fill(~torch.tensor(e.trained[1:]), IGNORE)
        y[row, : len(targets)] = targets
    return x, y


class ChatBatches(SeededSampler):
    """Endless, resumable batches of conversations: drawn from ``pool`` or, with no pool, fresh
    questions made on the fly (``fresh``, train split only). Seeded like ``data.Batches``."""

    def __init__(self, tokenizer: Tokenizer, batch_size: int, block_size: int, seed: int,
                 device: str | torch.device, pool: list[Encoded] | None = None,
                 fresh: tuple[str, int] | None = None, worked: float = 0.0, style: str = "units") -> None:
        if pool is not None and not pool:
            raise DataError("no conversations to draw batches from: the split is empty")
        self.tokenizer, self.batch_size, self.block_size = tokenizer, batch_size, block_size
        self.pool, self.fresh, self.device = pool, fresh, torch.device(device)
        self.worked, self.style = worked, style
        self.pad_id = tokenizer.special_ids["<|end|>"]
        super().__init__(seed)

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.pool is not None:
            chosen = self.pick(self.pool, self.batch_size)
        else:
            assert self.fresh is not None
            rng = self.fresh_rng()
            chosen = [encode_question(self.tokenizer, q, rng.random() < self.worked, self.style)
                      for q in fresh_questions(rng, *self.fresh, self.batch_size)]
        return to_device(*conversation_rows(chosen, self.block_size, self.pad_id), self.device)


def encode_question(tokenizer: Tokenizer, question: Question, worked: bool = False, style: str = "units") -> Encoded:
    """A question and its demonstration: the bare answer, or with its work shown."""
    return encode_conversation(tokenizer, question.messages(question.demonstration(worked, style)))


def encode_questions(tokenizer: Tokenizer, asked: list[Question], worked: float, seed: int,
                     style: str = "units") -> list[Encoded]:
    """A fixed pool of demonstrations; a seeded share ``worked`` of them show their work."""
    rng = random.Random(f"worked:{seed}")
    return [encode_question(tokenizer, q, rng.random() < worked, style) for q in asked]


class ChatDataset:
    """The train and held-out conversations of a chat run, encoded with a chat tokenizer.

    ``base``: the tokenizer of the model being finetuned; the run's tokenizer extends it with
    the chat tokens and any new characters (``chat.with_chat_tokens``). None: a new vocabulary.
    """

    def __init__(self, config: ChatConfig, base: Tokenizer | None = None) -> None:
        if not config.enabled:
            raise ConfigError("no conversations given: pass --chat-data FILE.jsonl or --chat-data arithmetic")
        config.validate()
        self.config = dataclasses.replace(config)
        if config.builtin:
            self._open_builtin(base)
        else:
            self._open_jsonl(Path(config.chat_data), base)

    def _open_builtin(self, base: Tokenizer | None) -> None:
        c = self.config
        self.tokenizer = with_chat_tokens(base, alphabet())
        try:
            self.val_questions = questions(c.chat_ops, c.chat_digits, c.chat_val, c.chat_seed, "val")
            train = questions(c.chat_ops, c.chat_digits, c.chat_examples, 0, "train") if c.chat_examples else None
        except ValueError as exc:
            raise ConfigError(f"{exc} (--chat-val / --chat-examples)") from None
        self.val_pool = encode_questions(self.tokenizer, self.val_questions, c.chat_worked, c.chat_seed,
                                         c.chat_work_style)
        self.train_pool = None if train is None else encode_questions(self.tokenizer, train, c.chat_worked, 0,
                                                                      c.chat_work_style)
        self._sha256 = hashlib.sha256(json.dumps(dataclasses.asdict(c), sort_keys=True).encode()).hexdigest()

    def _open_jsonl(self, path: Path, base: Tokenizer | None) -> None:
        conversations = read_conversations(path)
        if len(conversations) < 2:
            raise DataError(f"{path} has 1 example: SFT needs at least 2 (one is held out for the val loss)")
        text = "".join(m.content for conversation in conversations for m in conversation)
        self.tokenizer = with_chat_tokens(base, text)
        order = list(range(len(conversations)))
        random.Random(self.config.chat_seed).shuffle(order)
        n_val = max(1, min(self.config.chat_val, len(conversations) // 10))
        encoded = [encode_conversation(self.tokenizer, conversations[i]) for i in order]
        self.val_pool, self.train_pool = encoded[:n_val], encoded[n_val:]
        self.val_questions = []
        self._sha256 = sha256_file(path)

    @property
    def folder(self) -> Path:  # named in messages the way a corpus folder is
        return Path(f"chat:{self.config.chat_data}")

    @property
    def source_sha256(self) -> str:
        return self._sha256

    def longest_conversation(self) -> int:
        """Positions the longest conversation needs (inputs drop the last token)."""
        pools = [*(self.train_pool or []), *self.val_pool]
        if self.config.builtin:  # fresh questions: the longest operands in every wording
            big = 10**self.config.chat_digits - 1
            extremes = [Problem(big, op, big) for op in self.config.chat_ops] + [Problem(0, "-", big)]
            pools += [encode_question(self.tokenizer, Question(p, t), self.config.chat_worked > 0,
                                      self.config.chat_work_style)
                      for p in extremes if p.op in self.config.chat_ops for t in range(len(TEMPLATES[p.op]))]
        return max(len(e.ids) for e in pools) - 1

    def check_block_size(self, block_size: int) -> None:
        need = self.longest_conversation()
        if block_size < need:
            raise DataError(f"the conversations of {self.folder} need block_size >= {need}, got {block_size}: "
                            f"train with --block-size {need} or more (a finetuned model keeps its own), or use shorter "
                            "conversations")

    def batches(self, split: str, batch_size: int, block_size: int, seed: int,
                device: str | torch.device = "cpu") -> ChatBatches:
        if split == "val":
            return ChatBatches(self.tokenizer, batch_size, block_size, seed, device, pool=self.val_pool)
        fresh = (self.config.chat_ops, self.config.chat_digits) if self.train_pool is None else None
        return ChatBatches(self.tokenizer, batch_size, block_size, seed, device, pool=self.train_pool, fresh=fresh,
                           worked=self.config.chat_worked, style=self.config.chat_work_style)

    def info(self) -> dict[str, Any]:
        return {"dataset": str(self.folder), "chat": dataclasses.asdict(self.config),
                "source": {"sha256": self.source_sha256}}

    def bits_per_char(self, loss: float, split: str = "val") -> float | None:
        return None  # the loss counts the assistant's tokens only
