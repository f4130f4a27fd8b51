"""Lesson: an encoder-decoder transformer learns a string task from scratch, in a minute or two on a CPU.

    quill seq2seq --task reverse     "hello" -> "olleh"
    quill seq2seq --task sort        "hello" -> "ehllo"
    quill seq2seq --task copy        "hello" -> "hello"

Sources are random strings of lowercase letters; the encoder reads the whole source, and the
decoder writes the answer one character at a time, attending to its own past (causal) and to
the source (cross-attention, models/seq2seq.py). Training draws fresh strings every batch;
the test strings are drawn first, from another seed, and never trained on. Accuracy is exact
match of the greedy decode, ending in EOS.
"""

from __future__ import annotations

import math
import random
import string
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from tqdm import tqdm

from quillgpt.errors import ConfigError
from quillgpt.lessons import one_thread
from quillgpt.models.seq2seq import Seq2SeqConfig, Seq2SeqTransformer

PAD, BOS, EOS = 0, 1, 2
SPECIALS = 3  # ids 0..2; the letters follow
Example = tuple[str, str, str]  # (source, the model's answer, the right answer)
TASKS: dict[str, Callable[[str], str]] = {
    "reverse": lambda s: s[::-1],
    "sort": lambda s: "".join(sorted(s)),
    "copy": lambda s: s,
}


@dataclass
class Seq2SeqTask:
    """Which strings, and what to do with them."""

    task: str = "reverse"
    min_len: int = 1
    max_len: int = 10
    letters: int = 26  # the first N lowercase letters

    def validate(self) -> None:
        if self.task not in TASKS:
            raise ConfigError(f"unknown task {self.task!r}: choose one of {', '.join(TASKS)}")
        if not 1 <= self.min_len <= self.max_len:
            raise ConfigError(f"need 1 <= --min-len <= --max-len, got {self.min_len} and {self.max_len}")
        if not 2 <= self.letters <= 26:
            raise ConfigError(f"--letters must be 2 to 26, got {self.letters}")

    @property
    def alphabet(self) -> str:
        return string.ascii_lowercase[: self.letters]

    @property
    def vocab_size(self) -> int:
        return SPECIALS + self.letters

    def encode(self, text: str) -> list[int]:
        return [SPECIALS + self.alphabet.index(c) for c in text]

    def decode(self, ids: list[int]) -> str:
        """Letters up to the first EOS (a special id inside the answer shows as '?')."""
        out = []
        for i in ids:
            if i == EOS:
                break
            out.append(self.alphabet[i - SPECIALS] if i >= SPECIALS else "?")
        return "".join(out)

    def random_string(self, rng: random.Random) -> str:
        return "".join(rng.choice(self.alphabet) for _ in range(rng.randint(self.min_len, self.max_len)))

    def batch(self, strings: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(src, tgt_in, targets): sources padded to max_len; targets are BOS answer EOS shifted, padding -100."""
        src = torch.full((len(strings), self.max_len), PAD, dtype=torch.long)
        tgt = torch.full((len(strings), self.max_len + 2), PAD, dtype=torch.long)
        for row, s in enumerate(strings):
            src[row, : len(s)] = torch.tensor(self.encode(s))
            answer = [BOS, *self.encode(TASKS[self.task](s)), EOS]
            tgt[row, : len(answer)] = torch.tensor(answer)
        targets = tgt[:, 1:].clone()
        targets[targets == PAD] = -100  # no loss on padding
        return src, tgt[:, :-1], targets


@dataclass
class Seq2SeqResult:
    task: str
    steps: int
    parameters: int
    seconds: float  # training
    first_loss: float
    final_loss: float  # mean of the last 20 steps
    accuracy: float  # exact match on the held-out strings
    n_test: int
    examples: list[Example] = field(default_factory=list)


def held_out(task: Seq2SeqTask, n: int, seed: int) -> list[str]:
    """``n`` distinct test strings (fewer if the task has fewer strings), drawn before any training string."""
    possible = sum(task.letters ** k for k in range(task.min_len, task.max_len + 1))
    if n >= possible:
        raise ConfigError(f"--n-test {n} leaves nothing to train on: only {possible} strings of these lengths "
                          "exist; lower --n-test or raise --max-len")
    rng, strings = random.Random(seed), dict[str, None]()  # a dict keeps the draw order
    while len(strings) < n:
        strings[task.random_string(rng)] = None
    return list(strings)


def exact_match(model: Seq2SeqTransformer, task: Seq2SeqTask, strings: list[str],
                batch_size: int = 250) -> tuple[float, list[Example]]:
    """Share of ``strings`` whose greedy answer is exactly right; and every (source, answer, truth)."""
    model.eval()
    rows = []
    for start in range(0, len(strings), batch_size):
        chunk = strings[start:start + batch_size]
        src, _, _ = task.batch(chunk)
        out = model.greedy_decode(src, BOS, EOS, task.max_len + 1)
        for s, ids in zip(chunk, out.tolist(), strict=True):
            finished = EOS in ids
            rows.append((s, task.decode(ids) if finished else task.decode(ids) + "...", TASKS[task.task](s)))
    model.train()
    return sum(answer == truth for _, answer, truth in rows) / max(1, len(rows)), rows


def train(task: Seq2SeqTask, steps: int = 600, batch_size: int = 64, lr: float = 3e-3, n_layer: int = 2,
          n_head: int = 4, n_embd: int = 64, n_test: int = 500, seed: int = 1337,
          verbose: bool = True) -> Seq2SeqResult:
    """Train an encoder-decoder on ``task`` and measure exact match on held-out strings."""
    task.validate()
    if steps < 1 or batch_size < 1 or n_test < 1:
        raise ConfigError(f"--steps, --batch-size and --n-test must be >= 1, got {steps}, {batch_size}, {n_test}")
    if not (math.isfinite(lr) and lr > 0):
        raise ConfigError(f"--lr must be a positive number, got {lr}: try 3e-3")
    say = print if verbose else _silent
    test = held_out(task, n_test, seed + 1)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = Seq2SeqTransformer(Seq2SeqConfig(vocab_size=task.vocab_size, block_size=task.max_len + 1,
                                                 n_layer=n_layer, n_head=n_head, n_embd=n_embd))
    say(f"{task.task}: strings of {task.min_len}-{task.max_len} letters from '{task.alphabet}'; encoder-decoder "
        f"with {n_layer}+{n_layer} blocks, {n_embd} wide, {model.num_parameters():,} parameters")
    with one_thread():
        losses, seconds, accuracy, rows = _train_and_test(model, task, test, steps, batch_size, lr, seed, verbose)
    final = sum(losses[-20:]) / len(losses[-20:])
    say(f"trained {steps} steps of {batch_size} strings in {seconds:.1f} s: loss {losses[0]:.4f} -> {final:.4f}")
    for source, answer, truth in rows[:5]:
        verdict = "ok" if answer == truth else "want " + truth
        say(f"   {source:>{task.max_len}} -> {answer:<{task.max_len + 3}} {verdict}")
    say(f"exact match on {len(test)} held-out strings (greedy): {accuracy:.1%}")
    return Seq2SeqResult(task.task, steps, model.num_parameters(), seconds, losses[0], final, accuracy, len(test),
                         rows[:5])


def _train_and_test(model: Seq2SeqTransformer, task: Seq2SeqTask, test: list[str], steps: int, batch_size: int,
                    lr: float, seed: int, verbose: bool) -> tuple[list[float], float, float, list[Example]]:
    """AdamW with cosine decay on fresh strings (never a test string); then exact match on ``test``."""
    test_set = set(test)
    rng = random.Random(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    losses: list[float] = []
    tic = time.perf_counter()
    bar = tqdm(range(steps), desc=f"seq2seq {task.task}", disable=not (verbose and sys.stderr.isatty()))
    for step in bar:
        for group in optimizer.param_groups:  # cosine decay to lr / 10 (no warmup needed at this size)
            group["lr"] = lr * (0.1 + 0.45 * (1 + math.cos(math.pi * step / steps)))
        strings = []
        while len(strings) < batch_size:
            s = task.random_string(rng)
            if s not in test_set:  # the held-out strings stay unseen
                strings.append(s)
        _, loss = model(*task.batch(strings))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(loss.item())
        if step % 50 == 0:
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
    seconds = time.perf_counter() - tic
    accuracy, rows = exact_match(model, task, test)
    return losses, seconds, accuracy, rows


def _silent(*args: object, **kwargs: object) -> None:
    """``print`` when the lesson runs quietly."""
