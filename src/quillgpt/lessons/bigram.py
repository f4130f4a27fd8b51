"""Lesson: a bigram model by counting, and the same model learned by gradient descent.

Counting: N[a, b] is how often character b follows character a in the train split;
P[a] = (N[a] + alpha) / sum is the next-character distribution (alpha > 0 smooths pairs
never seen, so no probability is zero). Without smoothing these frequencies are exactly
the maximum-likelihood bigram model: no table of logits can reach a lower train loss.

Learning: ``BigramLanguageModel`` (models/bigram.py) holds a (vocab, vocab) table of logits
and is trained with AdamW on random windows, as in the lecture (which takes 10,000 steps of
32 windows at lr 1e-3; a table of logits tolerates far more, so 300 steps of 256 windows at
lr 0.1 do here). Its softmax rows move towards the counted frequencies, so its train loss
approaches the counting model's from above.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from quillgpt.config import ModelConfig
from quillgpt.corpora import find_corpus, read_text
from quillgpt.data import TRAIN_FRACTION, Batches
from quillgpt.errors import ConfigError, DataError
from quillgpt.lessons import one_thread
from quillgpt.models.bigram import BigramLanguageModel
from quillgpt.tokenizers import CharTokenizer


@dataclass
class BigramLesson:
    source: str
    vocab_size: int
    train_tokens: int
    val_tokens: int
    uniform_loss: float  # ln(vocab): a model that knows nothing
    counting_train_optimum: float  # unsmoothed counts on train: the lowest train loss of any bigram model
    counting_val: float  # smoothed counts on val
    learned_train: float  # the trained embedding bigram, on the whole train split
    learned_val: float  # ... and on the whole val split
    steps: int
    seconds: float

    @property
    def checks(self) -> dict[str, bool]:
        """What the lesson claims and verifies; any False is a bug (``quill lesson`` exits 1).

        The unsmoothed counts are the maximum-likelihood bigram model of the train split, so no
        table of logits, however trained, gets a lower train loss (up to rounding); and even a few
        steps at the default learning rate leave a uniform guess behind.
        """
        return {"counting beats a uniform guess": self.counting_train_optimum < self.uniform_loss,
                "no bigram model beats the unsmoothed counts on train":
                    self.learned_train >= self.counting_train_optimum - 1e-9,
                "the learned bigram beats a uniform guess": self.learned_train < self.uniform_loss}

    @property
    def ok(self) -> bool:
        return all(self.checks.values())


def count_matrix(ids: np.ndarray, vocab_size: int) -> torch.Tensor:
    """N[a, b]: how often token b follows token a (all pairs counted at once with bincount)."""
    pairs = torch.from_numpy(ids[:-1].astype(np.int64) * vocab_size + ids[1:].astype(np.int64))
    return torch.bincount(pairs, minlength=vocab_size * vocab_size).view(vocab_size, vocab_size).double()


def nll(log_probs: torch.Tensor, ids: np.ndarray) -> float:
    """Mean negative log-likelihood of each next token of ``ids`` under a (V, V) table of log-probabilities."""
    a, b = torch.from_numpy(ids[:-1].astype(np.int64)), torch.from_numpy(ids[1:].astype(np.int64))
    return -log_probs[a, b].double().mean().item()


def counting_log_probs(counts: torch.Tensor, alpha: float) -> torch.Tensor:
    """log P[a, b] = log((N[a, b] + alpha) / sum_b (N[a, b] + alpha))."""
    smoothed = counts + alpha
    return (smoothed / smoothed.sum(1, keepdim=True)).log()


def train_embedding_bigram(train_ids: np.ndarray, vocab_size: int, steps: int, batch_size: int, lr: float,
                           seed: int, progress: bool = False) -> BigramLanguageModel:
    """The lecture's training loop: AdamW on random (batch, 8) windows of the train split."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = BigramLanguageModel(ModelConfig(arch="bigram", vocab_size=vocab_size, block_size=8, n_layer=1,
                                                n_head=1, n_embd=1, dropout=0.0))
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    batches = Batches(train_ids, batch_size, 8, seed)
    show = progress and sys.stderr.isatty()
    for _ in tqdm(range(steps), desc="training the embedding bigram", disable=not show, leave=False):
        x, y = batches.next()
        _, loss = model(x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return model


def lesson_text(text_path: str | None, data_path: str | None) -> tuple[str, str]:
    """(text, where it came from): ``text_path``, or Tiny Shakespeare found the usual way."""
    if text_path:
        return read_text(text_path), str(text_path)
    path = find_corpus("shakespeare", data_path)
    return read_text(path), f"Tiny Shakespeare ({path})"


def run(text_path: str | None = None, data_path: str | None = None, steps: int = 300, batch_size: int = 256,
        lr: float = 0.1, alpha: float = 1.0, seed: int = 1337, verbose: bool = True) -> BigramLesson:
    """Count, train, and compare both on the train and val splits (first 90% / last 10% of the text)."""
    if steps < 1 or batch_size < 1:
        raise ConfigError(f"--steps and --batch-size must be >= 1, got {steps} and {batch_size}")
    if not (math.isfinite(alpha) and alpha > 0):
        raise ConfigError(f"--alpha (the smoothing count) must be > 0, got {alpha}: try 1")
    say = print if verbose else _silent
    text, source = lesson_text(text_path, data_path)
    cut = int(len(text) * TRAIN_FRACTION)
    tokenizer = CharTokenizer.from_text(text)
    V = tokenizer.vocab_size
    train_ids = np.array(tokenizer.encode(text[:cut]), dtype=np.int64)
    val_ids = np.array(tokenizer.encode(text[cut:]), dtype=np.int64)
    if len(train_ids) < 10 or len(val_ids) < 2:
        raise DataError(f"{source} is too short for a train/val split ({len(text)} characters): give more text")
    say(f"{source}: {V} characters, {len(train_ids):,} train / {len(val_ids):,} val tokens")
    say(f"a uniform guess: ln({V}) = {math.log(V):.4f} nats per character\n")

    counts = count_matrix(train_ids, V)
    optimum = nll(counting_log_probs(counts, 0.0), train_ids)
    counting_val = nll(counting_log_probs(counts, alpha), val_ids)
    say(f"counting: N[a, b] over {len(train_ids) - 1:,} train pairs, P = (N + {alpha:g}) / row sums")
    say(f"   train {optimum:.4f} (unsmoothed: the lowest any bigram model can reach), val {counting_val:.4f}")

    tic = time.perf_counter()
    with one_thread():
        model = train_embedding_bigram(train_ids, V, steps, batch_size, lr, seed, progress=verbose)
    seconds = time.perf_counter() - tic
    with torch.no_grad():
        learned = F.log_softmax(model.token_embedding_table.weight.double(), dim=-1)
    learned_train, learned_val = nll(learned, train_ids), nll(learned, val_ids)
    say(f"learned: nn.Embedding({V}, {V}) logits, AdamW lr {lr:g}, {steps} steps of {batch_size}x8 tokens "
        f"({seconds:.1f} s)")
    say(f"   train {learned_train:.4f} (+{learned_train - optimum:.4f} above the optimum), val {learned_val:.4f} "
        f"({learned_val - counting_val:+.4f} vs counting)")
    return BigramLesson(source, V, len(train_ids), len(val_ids), math.log(V), optimum, counting_val,
                        learned_train, learned_val, steps, seconds)


def _silent(*args: object, **kwargs: object) -> None:
    """``print`` when the lesson runs quietly."""
