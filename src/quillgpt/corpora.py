"""Corpora: find a named text corpus on this machine, or download it with a checked sha256.

The places looked in, in order: ``--data PATH``, ``$QUILL_DATA_DIR``, the user cache, and the
shared ``data/`` folder beside the checkout; then the corpus's canonical URL, if the network
allows. ``read_text`` turns every way a text file can be unreadable into one clear line.
"""

from __future__ import annotations

import hashlib
import os
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from quillgpt.errors import DataError
from quillgpt.fsutil import atomic_write, sha256_file


@dataclass(frozen=True)
class Corpus:
    """A named corpus: where it lives upstream, and how to recognise the right file."""

    name: str
    filename: str
    subdir: str  # folder name under a data directory (QUILL_DATA_DIR, cache, shared/data)
    url: str  # empty: cannot be downloaded; ``origin`` says where it comes from
    sha256: str
    text_sha256: str = ""  # a gzip corpus: the sha256 of its text (an uncompressed copy is accepted too)
    origin: str = ""

    @property
    def accepted_sha256(self) -> set[str]:
        return {self.sha256, self.text_sha256} - {""}


CORPORA = {
    "shakespeare": Corpus(
        name="shakespeare",
        filename="input.txt",
        subdir="tinyshakespeare",
        url="https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
        sha256="86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
    ),
    # 95 public-domain novels (1839-1930), 74,919,742 bytes of UTF-8 text, gzip -9 -n.
    # Built from the "100 English Novels" corpus (commit 143e601 of the repository below):
    # 5 novels not public domain everywhere left out, BOMs and CRLFs removed, files joined.
    # No URL serves this exact file, so it is not downloaded; SOURCE.md beside it has the
    # recipe and MANIFEST.tsv the byte range and sha256 of each novel.
    "english-novels": Corpus(
        name="english-novels",
        filename="novels95.txt.gz",
        subdir="english_novels",
        url="",
        sha256="a7abe46a29cf13e716a52cd8e27a86c1f7bf828d7079be1c2b23dcd7bf59ec01",
        text_sha256="b5d8c4d75761a922ae9f615eb55b279a88ba27943cc7466315e7b5bd5dac8f9f",
        origin="95 novels of https://github.com/computationalstylistics/100_english_novels joined as its "
               "SOURCE.md describes",
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
            if actual not in corpus.accepted_sha256:
                raise DataError(
                    f"{place} has sha256 {actual[:12]}..., not the expected {corpus.sha256[:12]}... for "
                    f"'{name}': replace it with the original file, or use it as your own text with --text {place}"
                )
            return place
    looked = ", ".join(str(p) for p in corpus_candidates(corpus, data_path))
    if not corpus.url:
        raise DataError(f"corpus '{name}' not found (looked in {looked}) and it cannot be downloaded: put "
                        f"{corpus.filename} ({corpus.origin}) in $QUILL_DATA_DIR/{corpus.subdir}/ or "
                        f"{user_cache_dir() / corpus.subdir}/, or pass --data PATH")
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
