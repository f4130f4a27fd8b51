"""``quill eval``: loss per token, and bits per character and per byte, which compare across tokenizers.

A character model and a BPE model predict different units, so their losses per token do
not compare. The information they need to encode the same text does: both are scored on
every token of the text (each token predicted from the tokens before it, in consecutive
windows of ``block_size``), the natural-log losses are summed, and the total is divided by
ln 2 and by the number of characters (or UTF-8 bytes) those predicted tokens spell:

    bits per character = sum of -ln p(token) / (ln 2 * characters covered)

The first token has no context and is not predicted, so the characters it covers are not
counted. Consecutive windows give each position the same amount of context, on average, as
the random windows training evaluates on, so the loss per token here matches training's
val loss up to sampling noise.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from quillgpt.checkpoint import LoadedRun, load_run
from quillgpt.data import TokenDataset, resolve_dataset
from quillgpt.errors import ConfigError, DataError
from quillgpt.sources import read_source_blocks, resolve_text_source, safe_chunks
from quillgpt.tokenizers import Tokenizer, covered_text_tables


@dataclass
class EvalResult:
    """Summed loss over ``tokens`` predicted tokens spelling ``chars`` characters / ``bytes`` bytes."""

    tokens: int
    chars: int
    bytes: int
    nats: float
    seconds: float = 0.0

    @property
    def loss(self) -> float:
        return self.nats / self.tokens

    @property
    def bits_per_token(self) -> float:
        return self.loss / math.log(2)

    @property
    def bits_per_char(self) -> float:
        return self.nats / math.log(2) / self.chars if self.chars else math.nan

    @property
    def bits_per_byte(self) -> float:
        return self.nats / math.log(2) / self.bytes if self.bytes else math.nan

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "loss": self.loss, "bits_per_token": self.bits_per_token,
                "bits_per_char": self.bits_per_char, "bits_per_byte": self.bits_per_byte}


def _windows(ids: np.ndarray, block_size: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(inputs, targets) of consecutive windows: the full ones stacked, then the leftover one."""
    inputs, targets = ids[:-1], ids[1:]
    full = len(inputs) // block_size
    parts = []
    if full:
        parts.append((inputs[:full * block_size].reshape(full, block_size),
                      targets[:full * block_size].reshape(full, block_size)))
    if len(inputs) > full * block_size:
        parts.append((inputs[full * block_size:][None, :], targets[full * block_size:][None, :]))
    return parts


@torch.no_grad()
def evaluate_ids(model: torch.nn.Module, ids: np.ndarray, tokenizer: Tokenizer, block_size: int,
                 batch_size: int = 32, device: str | torch.device = "cpu") -> EvalResult:
    """Score every token of ``ids`` after the first (see the module docstring)."""
    if len(ids) < 2:
        raise DataError(f"{len(ids)} token(s) are too few to evaluate: give at least two tokens of text")
    tic = time.perf_counter()
    was_training = model.training
    model.eval()
    nats = torch.zeros((), dtype=torch.float64, device=device)
    try:
        for inputs, targets in _windows(np.asarray(ids, dtype=np.int64), block_size):
            for start in range(0, len(inputs), batch_size):
                x = torch.from_numpy(inputs[start:start + batch_size]).to(device)
                y = torch.from_numpy(targets[start:start + batch_size]).to(device)
                logits, _ = model(x)
                nats += F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), y.reshape(-1),
                                        reduction="sum").double()
    finally:
        model.train(was_training)
    n_bytes, n_chars = covered_text_tables(tokenizer)
    predicted = np.asarray(ids[1:], dtype=np.int64)
    return EvalResult(tokens=len(predicted), chars=int(n_chars[predicted].sum()), bytes=int(n_bytes[predicted].sum()),
                      nats=float(nats.item()), seconds=time.perf_counter() - tic)


def encode_text(specs: list[str], tokenizer: Tokenizer) -> np.ndarray:
    """Tokenize text files (plain or gzip; folders and globs too) piece by piece."""
    source = resolve_text_source(specs)
    pieces = [ids for chunk in safe_chunks(read_source_blocks(source)) for ids in tokenizer.encode_many([chunk])]
    ids = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int64)
    if len(ids) < 2:
        raise DataError(f"{source.describe()} has too little text to evaluate: give a file with some content")
    return ids


def eval_run(run_dir: str | Path, texts: list[str] | None = None, dataset: str | None = None,
             which: str = "latest", device: str | torch.device = "cpu", batch_size: int = 32,
             max_tokens: int | None = None) -> tuple[EvalResult, LoadedRun, str]:
    """Evaluate a run on text files, or on the val split of a prepared dataset (default: its own)."""
    if texts and dataset:
        raise ConfigError("give --text FILE or --dataset FOLDER, not both")
    if max_tokens is not None and max_tokens < 1:
        raise ConfigError(f"--max-tokens must be >= 1, got {max_tokens}")
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {batch_size}")
    run = load_run(run_dir, which=which, device=device)
    if texts:
        ids, what = encode_text(texts, run.tokenizer), "the text of " + ", ".join(texts)
    else:
        spec = dataset or str(run.data_info.get("dataset"))
        data = TokenDataset(resolve_dataset(spec))
        if data.tokenizer != run.tokenizer:
            raise ConfigError(f"{data.folder} is tokenized differently ({data.tokenizer.describe()}) from "
                              f"{run.run_dir} ({run.tokenizer.describe()}): prepare the text with "
                              f"quill prepare ... --tokenizer-from {run.run_dir}, or pass --text FILE")
        ids, what = data.splits["val"], f"the val split of {data.folder}"
    if max_tokens is not None:
        ids = ids[:max_tokens + 1]
    result = evaluate_ids(run.model, ids, run.tokenizer, run.config.model.block_size, batch_size, device)
    return result, run, what


def format_result(result: EvalResult, run: LoadedRun, what: str) -> str:
    return (f"eval {run.run_dir} ({run.checkpoint.name}) on {what}:\n"
            f"  {result.tokens:,} tokens predicted, covering {result.chars:,} characters / {result.bytes:,} bytes\n"
            f"  loss {result.loss:.4f} nats/token = {result.bits_per_token:.4f} bits/token\n"
            f"  {result.bits_per_char:.4f} bits/char   {result.bits_per_byte:.4f} bits/byte   "
            f"({result.seconds:.1f} s)")
