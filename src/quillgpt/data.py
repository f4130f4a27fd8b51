"""Data: tokenize a corpus (found by ``quillgpt.corpora``) into a memmap, and draw random (B, T) batches.

A prepared dataset is a folder with ``train.bin`` and ``val.bin`` (token ids as uint16,
or uint32 when the vocabulary has more than 65,536 tokens) and ``meta.json`` (tokenizer,
source sha256, token/character/byte counts of each split, the split rule). ``meta.json``
is written last, so a folder without it was never finished and is prepared again.

Preparing streams the text (see ``quillgpt.sources``): one pass checks it and counts its
characters, a second trains the BPE tokenizer if one is asked for, and a third encodes
it piece by piece straight into the two token files, so memory stays flat however large
the corpus is.

The split rule: the first 90% of the *characters* are the train split and the last 10%
the val split, each tokenized on its own. Cutting the text (not the tokens) gives every
tokenizer the same val text, so bits per character compare across tokenizers; for the
character tokenizer it is the lecture's rule (first 90% of the tokens).
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import random
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Protocol

import numpy as np
import torch

from quillgpt.corpora import CORPORA, find_corpus
from quillgpt.errors import DataError, TokenizerError
from quillgpt.fsutil import atomic_write, atomic_write_json, sha256_file
from quillgpt.sources import CHUNK_CHARS, TextSource, read_source_blocks, resolve_text_source, safe_chunks
from quillgpt.tokenizers import (
    KINDS,
    BPETokenizer,
    CharTokenizer,
    Tokenizer,
    check_bpe_vocab_size,
    tokenizer_from_dict,
)

META_VERSION = 1
TRAIN_FRACTION = 0.9  # first 90% of the characters train, the last 10% validate
SPLIT_RULE = "first 90% of characters -> train, last 10% -> val, each tokenized on its own"
ENCODE_BATCH = 8  # chunks encoded per call: the BPE library spreads them over the cores


# ---------------------------------------------------------------------------------------
# Preparing a dataset
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TokenizerChoice:
    """How to tokenize a corpus: a new char or BPE tokenizer, or an existing one reused."""

    kind: str = "char"
    vocab_size: int | None = None  # BPE only
    existing: Tokenizer | None = None  # reuse this one (e.g. a pretrained run's)
    existing_from: str = ""  # where it came from, for folder names and messages

    def validate(self) -> None:
        if self.kind not in KINDS:
            raise DataError(f"unknown tokenizer '{self.kind}': choose one of {', '.join(KINDS)}")
        if self.kind == "bpe" and self.existing is None:
            if self.vocab_size is None:
                raise DataError("--tokenizer bpe needs --vocab-size N (e.g. 2048 or 8192)")
            check_bpe_vocab_size(self.vocab_size)
        elif self.vocab_size is not None:
            raise DataError("--vocab-size applies only to a new BPE tokenizer: add --tokenizer bpe, "
                            "or drop --vocab-size")

    def folder_suffix(self) -> str:
        if self.existing is not None:
            return "-tok-" + (Path(self.existing_from).name or "reused")
        return f"-bpe{self.vocab_size}" if self.kind == "bpe" else ""


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 while every id fits (vocabularies up to 65,536 tokens), uint32 beyond."""
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


@dataclass
class _Scan:
    chars: int = 0
    bytes: int = 0
    blank: bool = True
    charset: set[str] | None = None
    text_sha256: str = ""


def _scan(blocks: Iterable[str], want_charset: bool) -> _Scan:
    """Pass 1: check every block (errors surface here, before anything is written) and count."""
    scan, digest = _Scan(charset=set() if want_charset else None), hashlib.sha256()
    for block in blocks:
        raw = block.encode("utf-8")
        digest.update(raw)
        scan.chars += len(block)
        scan.bytes += len(raw)
        scan.blank = scan.blank and block.isspace()
        if scan.charset is not None:
            scan.charset.update(block)
    scan.text_sha256 = digest.hexdigest()
    return scan


def _head(chunks: Iterable[str], n_chars: int) -> Iterator[str]:
    """The first ``n_chars`` characters of a stream of chunks."""
    left = n_chars
    for chunk in chunks:
        if left <= 0:
            return
        yield chunk[:left]
        left -= len(chunk)


def _split_at(chunks: Iterable[str], cut: int) -> Iterator[tuple[str, str]]:
    """Label each piece train or val, splitting the chunk that holds character ``cut``."""
    seen = 0
    for chunk in chunks:
        head = max(0, min(len(chunk), cut - seen))
        if head:
            yield "train", chunk[:head]
        if head < len(chunk):
            yield "val", chunk[head:]
        seen += len(chunk)


def _make_tokenizer(choice: TokenizerChoice, scan: _Scan, make_blocks: Callable[[], Iterable[str]],
                    cut: int) -> Tokenizer:
    if choice.existing is not None:
        tokenizer = choice.existing
        if isinstance(tokenizer, CharTokenizer):
            unknown = sorted(scan.charset - set(tokenizer.chars)) if scan.charset is not None else []
            if unknown:
                shown = ", ".join(f"{c!r}" for c in unknown[:5])
                raise TokenizerError(f"the text has {len(unknown)} character(s) outside the character vocabulary "
                                     f"of {choice.existing_from} ({shown}): reuse a bpe tokenizer instead, or "
                                     "remove them from the text")
        return tokenizer
    if choice.kind == "bpe":
        # Trained on the train split only, so nothing of the val text leaks into the merges.
        return BPETokenizer.train(_head(safe_chunks(make_blocks()), cut or scan.chars), choice.vocab_size or 0)
    return CharTokenizer(sorted(scan.charset or ()))


def prepare_blocks(make_blocks: Callable[[], Iterable[str]], out_dir: str | Path, source: dict[str, Any],
                   tokenizer: TokenizerChoice | None = None, describe: str = "the text",
                   chunk_chars: int = CHUNK_CHARS, progress: Callable[[str], None] | None = None) -> Path:
    """Tokenize a text given as a re-readable stream of blocks and write the dataset to ``out_dir``.

    ``make_blocks()`` must return the same text each time it is called: it is read up to three times.
    """
    choice = tokenizer or TokenizerChoice()
    choice.validate()
    say = progress or (lambda message: None)
    want_charset = choice.kind == "char" if choice.existing is None else isinstance(choice.existing, CharTokenizer)
    say(f"checking {describe} ...")
    scan = _scan(make_blocks(), want_charset)
    if scan.blank:
        raise DataError(f"{describe} is empty: give a text file with some content")
    cut = int(TRAIN_FRACTION * scan.chars)
    if choice.existing is None and choice.kind == "bpe":
        say(f"training a byte-level BPE tokenizer (vocab {choice.vocab_size}) on {cut:,} characters ...")
    tok = _make_tokenizer(choice, scan, make_blocks, cut)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "meta.json").unlink(missing_ok=True)  # marks the folder unfinished until the end
    say(f"encoding {scan.chars:,} characters into {out} ...")
    dtype = token_dtype(tok.vocab_size)
    counts = {split: {"tokens": 0, "chars": 0, "bytes": 0} for split in ("train", "val")}

    def encode_into(train_tmp: Path, val_tmp: Path) -> None:
        with open(train_tmp, "wb") as train_file, open(val_tmp, "wb") as val_file:
            files = {"train": train_file, "val": val_file}
            pieces = _split_at(safe_chunks(make_blocks(), chunk_chars), cut)
            _encode_pieces(tok, pieces, files, counts, dtype)

    # Both files are written under temporary names and renamed only when all went well.
    atomic_write(out / "train.bin", lambda train_tmp: atomic_write(
        out / "val.bin", lambda val_tmp: encode_into(train_tmp, val_tmp)))
    split = {"rule": SPLIT_RULE, **{f"{s}_{k}": v for s, c in counts.items() for k, v in c.items()}}
    meta = {"version": META_VERSION, "dtype": dtype.name, "tokenizer": tok.to_dict(),
            "source": {"chars": scan.chars, "bytes": scan.bytes, "text_sha256": scan.text_sha256, **source},
            "split": split}
    atomic_write_json(out / "meta.json", meta)
    return out


def _encode_pieces(tok: Tokenizer, pieces: Iterable[tuple[str, str]], files: dict[str, BinaryIO],
                   counts: dict[str, dict[str, int]], dtype: np.dtype) -> None:
    batch: list[tuple[str, str]] = []

    def flush() -> None:
        for (split, text), ids in zip(batch, tok.encode_many([text for _, text in batch]), strict=True):
            files[split].write(ids.astype(dtype).tobytes())
            counts[split]["tokens"] += len(ids)
            counts[split]["chars"] += len(text)
            counts[split]["bytes"] += len(text.encode("utf-8"))
        batch.clear()

    for piece in pieces:
        batch.append(piece)
        if len(batch) >= ENCODE_BATCH:
            flush()
    flush()


def prepare_text(text: str, out_dir: str | Path, source: dict[str, Any],
                 tokenizer: TokenizerChoice | None = None, chunk_chars: int = CHUNK_CHARS) -> Path:
    """Tokenize an in-memory ``text`` (a character vocabulary unless told otherwise)."""
    return prepare_blocks(lambda: [text], out_dir, source, tokenizer, chunk_chars=chunk_chars)


def prepare_source(source: TextSource, out_dir: str | Path, name: str | None = None,
                   tokenizer: TokenizerChoice | None = None, chunk_chars: int = CHUNK_CHARS,
                   progress: Callable[[str], None] | None = None) -> Path:
    """Tokenize the files of ``source`` (see ``quillgpt.sources``) into a dataset folder."""
    info: dict[str, Any] = {"name": name or source.name, "sha256": source.sha256(), "files": len(source.files)}
    if len(source.files) == 1:
        info["path"] = str(source.files[0].resolve())
    else:
        info["paths"] = [str(p.resolve()) for p in source.files[:100]]  # the first 100, to keep meta small
    return prepare_blocks(lambda: read_source_blocks(source), out_dir, info, tokenizer, source.describe(),
                          chunk_chars, progress)


def prepare_file(path: str | Path, out_dir: str | Path, name: str | None = None,
                 tokenizer: TokenizerChoice | None = None, progress: Callable[[str], None] | None = None) -> Path:
    """Tokenize one text file (plain or gzip)."""
    return prepare_source(resolve_text_source([str(path)]), out_dir, name, tokenizer, progress=progress)


def prepare_corpus(name: str, out_dir: str | Path | None = None, data_path: str | None = None,
                   tokenizer: TokenizerChoice | None = None, progress: Callable[[str], None] | None = None) -> Path:
    folder = out_dir or default_dataset_dir(name, tokenizer)
    return prepare_file(find_corpus(name, data_path), folder, name=name, tokenizer=tokenizer, progress=progress)


def default_dataset_dir(name: str, tokenizer: TokenizerChoice | None = None) -> Path:
    """data/NAME for the character tokenizer; data/NAME-bpeV or data/NAME-tok-SOURCE otherwise,
    so a BPE dataset never replaces the character one a plain ``--dataset NAME`` finds."""
    return Path("data") / (name + (tokenizer.folder_suffix() if tokenizer else ""))


def load_tokenizer(path: str | Path) -> Tokenizer:
    """The tokenizer of a run directory, a prepared dataset, or a tokenizer.json / meta.json file."""
    path = Path(path)
    candidates = [path] if path.is_file() else [path / "tokenizer.json", path / "meta.json"]
    for candidate in candidates:
        if candidate.is_file():
            try:
                data = json.loads(candidate.read_text())
            except (OSError, UnicodeDecodeError, ValueError) as exc:
                raise DataError(f"cannot read {candidate} ({exc}): give an intact run or dataset") from None
            if isinstance(data, dict) and "kind" not in data and "tokenizer" in data:
                data = data["tokenizer"]  # a dataset's meta.json
            try:
                return tokenizer_from_dict(data)
            except TokenizerError as exc:
                raise DataError(f"{candidate} holds no usable tokenizer ({exc})") from None
    raise DataError(f"no tokenizer found in {path}: give a run directory, a prepared dataset folder, "
                    "or a tokenizer.json file")


def resolve_dataset(spec: str, data_path: str | None = None) -> Path:
    """Turn ``--dataset`` into a prepared folder, preparing it first when needed.

    ``spec`` is a prepared folder, a registered corpus name, or a UTF-8 text file.
    """
    path = Path(spec)
    if (path / "meta.json").is_file():
        return path
    if spec in CORPORA:
        folder = default_dataset_dir(spec)
        if (folder / "meta.json").is_file():
            return folder
        return prepare_corpus(spec, folder, data_path)
    if path.is_file():
        folder = default_dataset_dir(path.stem.removesuffix(".txt") if path.suffix == ".gz" else path.stem)
        if (folder / "meta.json").is_file():
            meta = _read_meta(folder)
            if meta.get("source", {}).get("sha256") == sha256_file(path):
                return folder
        return prepare_file(path, folder)
    if path.is_dir():
        raise DataError(f"{path} has no meta.json, so it is not a prepared dataset: "
                        f"run quill prepare --text FILE --out {path}")
    raise DataError(f"dataset '{spec}' not found: give a corpus name ({', '.join(CORPORA)}), "
                    "a text file, or a folder made by quill prepare")


# ---------------------------------------------------------------------------------------
# Loading a dataset and drawing batches
# ---------------------------------------------------------------------------------------


def _read_meta(folder: Path) -> dict[str, Any]:
    try:
        meta = json.loads((folder / "meta.json").read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read {folder / 'meta.json'} ({exc}): prepare the dataset again") from None
    if not isinstance(meta, dict) or meta.get("version") != META_VERSION:
        raise DataError(f"{folder / 'meta.json'} is not a quillgpt dataset (version {META_VERSION}): "
                        "prepare the dataset again")
    return meta


class TokenDataset:
    """A prepared dataset: the tokenizer and the train/val token memmaps."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.meta = _read_meta(self.folder)
        self.tokenizer = tokenizer_from_dict(self.meta.get("tokenizer"))
        dtype = self.meta.get("dtype", "uint16")
        if dtype not in ("uint16", "uint32"):
            raise DataError(f"{self.folder / 'meta.json'} names token dtype {dtype!r} (uint16 or uint32 expected): "
                            "prepare the dataset again")
        self.dtype = np.dtype(dtype)
        self.splits = {split: self._open(split) for split in ("train", "val")}

    def _open(self, split: str) -> np.ndarray:
        path = self.folder / f"{split}.bin"
        expected = self.meta["split"][f"{split}_tokens"]
        if not path.is_file() or path.stat().st_size != self.dtype.itemsize * expected:
            raise DataError(f"{path} is missing or has the wrong size (expected {expected} tokens): "
                            "prepare the dataset again")
        if expected == 0:  # numpy cannot map an empty file
            return np.zeros(0, dtype=self.dtype)
        return np.memmap(path, dtype=self.dtype, mode="r")

    def bits_per_char(self, loss: float, split: str = "val") -> float | None:
        """A mean loss (nats per token) on ``split`` as bits per character of its text.

        Tokens per character of the whole split times the mean loss of sampled windows:
        an estimate (``quill eval`` computes it exactly). None for datasets prepared before
        character counts were recorded.
        """
        chars = self.meta["split"].get(f"{split}_chars")
        tokens = self.meta["split"].get(f"{split}_tokens")
        if not chars or not tokens:
            return None
        return loss * tokens / chars / math.log(2)

    @property
    def source_sha256(self) -> str:
        return str(self.meta.get("source", {}).get("sha256", ""))

    def batches(self, split: str, batch_size: int, block_size: int, seed: int,
                device: str | torch.device = "cpu") -> Batches:
        """The trainer's sampler of random windows of ``split`` (train or val)."""
        return Batches(self.splits[split], batch_size, block_size, seed, device)

    def info(self) -> dict[str, Any]:
        """What a run records about its data (data.json)."""
        return {"dataset": str(self.folder), "source": self.meta.get("source", {}),
                "split": self.meta.get("split", {})}

    def check_block_size(self, block_size: int) -> None:
        for split, data in self.splits.items():
            if len(data) < block_size + 1:
                raise DataError(f"the {split} split has {len(data)} tokens, too few for block_size "
                                f"{block_size}: use --block-size {max(1, len(data) - 1)} or less, or more text")


class BatchSampler(Protocol):
    """What the trainer draws batches from; ``state_dict`` makes a resumed run exact."""

    def next(self) -> tuple[torch.Tensor, torch.Tensor]: ...
    def state_dict(self) -> dict[str, str]: ...
    def load_state_dict(self, state: dict[str, str]) -> None: ...


class TrainingData(Protocol):
    """What the trainer needs of its data: a prepared corpus (``TokenDataset``) or a task's
    problems (``quillgpt.tasks.dataset.ArithmeticDataset``)."""

    tokenizer: Tokenizer

    @property
    def source_sha256(self) -> str: ...
    def check_block_size(self, block_size: int) -> None: ...
    def batches(self, split: str, batch_size: int, block_size: int, seed: int,
                device: str | torch.device = "cpu") -> BatchSampler: ...
    def info(self) -> dict[str, Any]: ...
    def bits_per_char(self, loss: float, split: str = "val") -> float | None: ...


class SeededSampler:
    """Base of the batch samplers: every random draw comes from a private, seeded
    ``torch.Generator``, so ``state_dict`` lets a resumed run draw exactly what it would have."""

    def __init__(self, seed: int) -> None:
        self.generator = torch.Generator().manual_seed(seed)

    def pick(self, pool: list[Any], count: int) -> list[Any]:
        """``count`` items of ``pool``, uniformly with replacement."""
        return [pool[i] for i in torch.randint(len(pool), (count,), generator=self.generator).tolist()]

    def fresh_rng(self) -> random.Random:
        """A Python RNG seeded from the generator, for samples made on the fly."""
        return random.Random(int(torch.randint(2**62, (1,), generator=self.generator)))

    def state_dict(self) -> dict[str, str]:
        return generator_state(self.generator)

    def load_state_dict(self, state: dict[str, str]) -> None:
        load_generator_state(self.generator, state)


class Batches(SeededSampler):
    """Random (B, T) windows of one split; ``y`` is ``x`` shifted left by one token.

    The random offsets come from a private ``torch.Generator``, so a seed fixes every batch
    and ``state_dict`` lets a resumed run draw exactly the batches it would have drawn.
    """

    def __init__(self, data: np.ndarray, batch_size: int, block_size: int, seed: int,
                 device: str | torch.device = "cpu") -> None:
        if len(data) < block_size + 1:
            raise DataError(f"{len(data)} tokens are too few for block_size {block_size}")
        self.data = data
        self.batch_size = batch_size
        self.block_size = block_size
        self.device = torch.device(device)
        super().__init__(seed)
        self._window = np.arange(block_size + 1)

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        starts = torch.randint(len(self.data) - self.block_size, (self.batch_size,), generator=self.generator)
        windows = self.data[starts.numpy()[:, None] + self._window]  # (B, T+1) copy out of the memmap
        tokens = torch.from_numpy(windows.astype(np.int64))
        return to_device(tokens[:, :-1], tokens[:, 1:], self.device)



# What a sampler's ``next`` returns: inputs and targets, and, for packed arithmetic rows
# (``tasks.arithmetic.ProblemBatches``), the model's extra keyword arguments ({"positions": ...}).
Batch = tuple[torch.Tensor, torch.Tensor] | tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]


def split_batch(batch: Batch) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """``(x, y, model keyword arguments)`` of any sampler's batch: ``model(x, y, **kwargs)``."""
    x, y, *extra = batch
    return x, y, (extra[0] if extra else {})


def unpadded_tokens(y: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """How many input tokens of a batch are not padding: in each row, the positions up to its last
    scored target (``ignore_index``, F.cross_entropy's, marks the rest). A position after it cannot
    change the loss, the model being causal: it is a right-padded row's padding (a task's problem,
    a conversation). A text batch scores every position, so every token counts. A tensor on y's
    device: reading it is the caller's sync."""
    scored = y != ignore_index
    ends = torch.where(scored.any(-1), y.size(-1) - scored.flip(-1).int().argmax(-1), 0)  # per row
    return ends.sum()


def to_device(x: torch.Tensor, y: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch on ``device``; on CUDA through pinned memory, so the copy overlaps with compute."""
    if device.type == "cuda":
        return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
    return x.contiguous().to(device), y.contiguous().to(device)


def generator_state(generator: torch.Generator) -> dict[str, str]:
    """A torch.Generator's state as JSON (for a sampler's ``state_dict``)."""
    return {"generator": base64.b64encode(generator.get_state().numpy().tobytes()).decode()}


def load_generator_state(generator: torch.Generator, state: dict[str, str]) -> None:
    raw = np.frombuffer(base64.b64decode(state["generator"]), dtype=np.uint8).copy()
    generator.set_state(torch.from_numpy(raw))
