"""Data: find a corpus, tokenize it into a memmap, and draw random (B, T) batches.

A prepared dataset is a folder with ``train.bin`` and ``val.bin`` (token ids as uint16)
and ``meta.json`` (tokenizer, source sha256, counts, split rule). ``meta.json`` is written
last, so a folder without it was never finished and is prepared again.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from quillgpt.errors import DataError
from quillgpt.fsutil import atomic_write, atomic_write_json, sha256_file
from quillgpt.tokenizers import CharTokenizer, tokenizer_from_dict

META_VERSION = 1
TRAIN_FRACTION = 0.9  # first 90% of the tokens train, the last 10% validate (the lecture's rule)
SPLIT_RULE = "first 90% of tokens -> train, last 10% -> val"


@dataclass(frozen=True)
class Corpus:
    """A named corpus: where it lives upstream, and how to recognise the right file."""

    name: str
    filename: str
    subdir: str  # folder name under a data directory (QUILL_DATA_DIR, cache, shared/data)
    url: str
    sha256: str


CORPORA = {
    "shakespeare": Corpus(
        name="shakespeare",
        filename="input.txt",
        subdir="tinyshakespeare",
        url="https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
        sha256="86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
    ),
}


# ---------------------------------------------------------------------------------------
# Finding a corpus
# ---------------------------------------------------------------------------------------


def user_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "quillgpt"


def _shared_data_dirs() -> list[Path]:
    # "../shared/data" beside the current folder, and beside the source checkout.
    checkout = Path(__file__).resolve().parents[2]
    return [Path.cwd().parent / "shared" / "data", checkout.parent / "shared" / "data"]


def corpus_candidates(corpus: Corpus, data_path: str | None = None) -> list[Path]:
    """Where to look for a named corpus, in order."""
    places: list[Path] = []
    if data_path:
        given = Path(data_path)
        places += [given, given / corpus.filename, given / corpus.subdir / corpus.filename]
    if os.environ.get("QUILL_DATA_DIR"):
        places.append(Path(os.environ["QUILL_DATA_DIR"]) / corpus.subdir / corpus.filename)
    places.append(user_cache_dir() / corpus.subdir / corpus.filename)
    places += [d / corpus.subdir / corpus.filename for d in _shared_data_dirs()]
    unique: list[Path] = []
    for place in places:
        if place not in unique:
            unique.append(place)
    return unique


def find_corpus(name: str, data_path: str | None = None, download: bool = True) -> Path:
    """Return the path of a registered corpus, downloading it into the cache if allowed."""
    if name not in CORPORA:
        raise DataError(f"unknown corpus '{name}': choose one of {', '.join(CORPORA)} or use --text FILE")
    corpus = CORPORA[name]
    for place in corpus_candidates(corpus, data_path):
        if place.is_file():
            actual = sha256_file(place)
            if actual != corpus.sha256:
                raise DataError(
                    f"{place} has sha256 {actual[:12]}..., not the expected {corpus.sha256[:12]}... for "
                    f"'{name}': replace it with the original file, or use it as your own text with --text {place}"
                )
            return place
    looked = ", ".join(str(p) for p in corpus_candidates(corpus, data_path))
    if not download:
        raise DataError(f"corpus '{name}' not found (looked in {looked}): pass --data PATH")
    return _download(corpus, looked)


def _download(corpus: Corpus, looked: str) -> Path:
    target = user_cache_dir() / corpus.subdir / corpus.filename
    try:
        with urllib.request.urlopen(corpus.url, timeout=30) as response:
            payload = response.read()
    except OSError as exc:
        raise DataError(
            f"corpus '{corpus.name}' not found locally (looked in {looked}) and the download from "
            f"{corpus.url} failed ({exc}): download it yourself and pass --data PATH or set QUILL_DATA_DIR"
        ) from None
    actual = hashlib.sha256(payload).hexdigest()
    if actual != corpus.sha256:
        raise DataError(f"downloaded '{corpus.name}' has sha256 {actual}, expected {corpus.sha256}: "
                        "the download is corrupt or the file changed upstream; try again or pass --data PATH")
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(target, lambda tmp: tmp.write_bytes(payload))
    return target


def read_text(path: str | Path) -> str:
    """Read a UTF-8 text file, turning every way it can go wrong into a one-line DataError."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"text file not found: {path} (check the path)")
    if path.is_dir():
        raise DataError(f"{path} is a directory, not a text file: pass the path of a UTF-8 .txt file")
    try:
        raw = path.read_bytes()
    except PermissionError:
        raise DataError(f"cannot read {path}: permission denied (check the file's permissions)") from None
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from None
    if not raw.strip():
        raise DataError(f"{path} is empty: give a text file with some content")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{path} is not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start}): "
            "convert it first, e.g. iconv -f latin1 -t utf-8"
        ) from None
    if "\x00" in text:
        raise DataError(f"{path} looks like a binary file (it contains NUL bytes): pass a text file")
    return text.removeprefix("\ufeff")


# ---------------------------------------------------------------------------------------
# Preparing a dataset
# ---------------------------------------------------------------------------------------


def prepare_text(text: str, out_dir: str | Path, source: dict[str, Any]) -> Path:
    """Tokenize ``text`` with a character vocabulary and write the dataset to ``out_dir``."""
    out = Path(out_dir)
    tokenizer = CharTokenizer.from_text(text)
    ids = np.array(tokenizer.encode(text), dtype=np.uint16)
    n_train = int(TRAIN_FRACTION * len(ids))
    out.mkdir(parents=True, exist_ok=True)
    (out / "meta.json").unlink(missing_ok=True)  # marks the folder unfinished until the end
    atomic_write(out / "train.bin", lambda tmp: ids[:n_train].tofile(tmp))
    atomic_write(out / "val.bin", lambda tmp: ids[n_train:].tofile(tmp))
    meta = {
        "version": META_VERSION,
        "dtype": "uint16",
        "tokenizer": tokenizer.to_dict(),
        "source": source,
        "split": {"rule": SPLIT_RULE, "train_tokens": int(n_train), "val_tokens": int(len(ids) - n_train)},
    }
    atomic_write_json(out / "meta.json", meta)
    return out


def prepare_file(path: str | Path, out_dir: str | Path, name: str | None = None) -> Path:
    path = Path(path)
    text = read_text(path)
    source = {"name": name or path.stem, "path": str(path.resolve()), "sha256": sha256_file(path),
              "bytes": path.stat().st_size, "chars": len(text)}
    return prepare_text(text, out_dir, source)


def prepare_corpus(name: str, out_dir: str | Path | None = None, data_path: str | None = None) -> Path:
    return prepare_file(find_corpus(name, data_path), out_dir or default_dataset_dir(name), name=name)


def default_dataset_dir(name: str) -> Path:
    return Path("data") / name


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
        folder = default_dataset_dir(path.stem)
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
        self.splits = {split: self._open(split) for split in ("train", "val")}

    def _open(self, split: str) -> np.ndarray:
        path = self.folder / f"{split}.bin"
        expected = self.meta["split"][f"{split}_tokens"]
        if not path.is_file() or path.stat().st_size != 2 * expected:
            raise DataError(f"{path} is missing or has the wrong size (expected {expected} tokens): "
                            "prepare the dataset again")
        return np.memmap(path, dtype=np.uint16, mode="r")

    @property
    def source_sha256(self) -> str:
        return str(self.meta.get("source", {}).get("sha256", ""))

    def check_block_size(self, block_size: int) -> None:
        for split, data in self.splits.items():
            if len(data) < block_size + 1:
                raise DataError(f"the {split} split has {len(data)} tokens, too few for block_size "
                                f"{block_size}: use --block-size {max(1, len(data) - 1)} or less, or more text")


class Batches:
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
        self.generator = torch.Generator().manual_seed(seed)
        self._window = np.arange(block_size + 1)

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        starts = torch.randint(len(self.data) - self.block_size, (self.batch_size,), generator=self.generator)
        windows = self.data[starts.numpy()[:, None] + self._window]  # (B, T+1) copy out of the memmap
        tokens = torch.from_numpy(windows.astype(np.int64))
        x, y = tokens[:, :-1], tokens[:, 1:]
        if self.device.type == "cuda":
            # Pinned memory lets the copy overlap with compute.
            return (x.pin_memory().to(self.device, non_blocking=True),
                    y.pin_memory().to(self.device, non_blocking=True))
        return x.contiguous().to(self.device), y.contiguous().to(self.device)

    def state_dict(self) -> dict[str, str]:
        return {"generator": base64.b64encode(self.generator.get_state().numpy().tobytes()).decode()}

    def load_state_dict(self, state: dict[str, str]) -> None:
        raw = np.frombuffer(base64.b64decode(state["generator"]), dtype=np.uint8).copy()
        self.generator.set_state(torch.from_numpy(raw))
