"""Text inputs of any size: a file, a folder of .txt files, or a glob; plain or gzip.

Text is streamed: files are read in 1 MiB blocks, checked (UTF-8, no NUL bytes) and
decoded incrementally, and handed on in pieces of about ``chunk_chars`` characters, so
memory does not grow with the corpus. Several files are joined in the order given
(a folder's and a glob's files sorted by path), each ending with a newline (one is added
where it is missing); a leading byte-order mark is dropped. Gzip files are recognised by
their first two bytes (no UTF-8 text starts with 0x1f 0x8b) and decompressed on the fly.

Pieces end at *safe boundaries* for byte-level BPE: just before a newline that follows a
non-space ASCII character. GPT-2's pre-tokenizer never joins a non-space character and
the whitespace after it into one word, so encoding the pieces one by one gives exactly
the tokens of encoding the whole text at once. (A text with no such place for a long
stretch is cut before a space, and as a last resort anywhere.)
"""

from __future__ import annotations

import codecs
import glob
import gzip
import hashlib
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from quillgpt.errors import DataError
from quillgpt.fsutil import sha256_file

READ_BLOCK = 1 << 20
CHUNK_CHARS = 1 << 18  # 256K characters: the library encodes a batch of these in parallel
TEXT_SUFFIXES = (".txt", ".txt.gz")
GZIP_MAGIC = b"\x1f\x8b"


@dataclass(frozen=True)
class TextSource:
    """The files behind a ``--text`` argument, in the order they are read."""

    specs: tuple[str, ...]
    files: tuple[Path, ...]

    @property
    def name(self) -> str:
        """A short name for the dataset folder: the first file's or folder's name, no suffixes."""
        first = Path(self.specs[0])
        if _is_glob(self.specs[0]) and not first.exists():
            first = Path(self.specs[0].split("*")[0].split("?")[0].split("[")[0] or ".").resolve()
            return first.name if first.suffix == "" else first.parent.name
        name = first.resolve().name
        for suffix in (".gz", ".txt"):
            name = name.removesuffix(suffix)
        return name or "text"

    def describe(self) -> str:
        return self.specs[0] if len(self.specs) == 1 else f"{self.specs[0]} (+{len(self.specs) - 1} more)"

    def sha256(self) -> str:
        """One file: the sha256 of its bytes as stored. Several: of their names and sha256s."""
        if len(self.files) == 1:
            return sha256_file(self.files[0])
        lines = "".join(f"{sha256_file(p)}  {p.name}\n" for p in self.files)
        return hashlib.sha256(lines.encode()).hexdigest()


def _is_glob(spec: str) -> bool:
    return any(c in spec for c in "*?[")


def resolve_text_source(specs: Iterable[str]) -> TextSource:
    """Expand files, folders and globs into the list of files to read; errors say what to fix."""
    specs = tuple(specs)
    if not specs:
        raise DataError("no text given: pass --text FILE, a folder of .txt files, or a glob like 'books/*.txt'")
    files: list[Path] = []
    for spec in specs:
        for path in _expand(spec):
            if path not in files:
                files.append(path)
    return TextSource(specs, tuple(files))


def _expand(spec: str) -> list[Path]:
    path = Path(spec)
    if path.is_file():
        return [path]
    if path.is_dir():
        found = sorted(p for p in path.rglob("*") if p.is_file() and p.name.lower().endswith(TEXT_SUFFIXES)
                       and not any(part.startswith(".") for part in p.relative_to(path).parts))
        if not found:
            raise DataError(f"{path} is a directory with no .txt or .txt.gz files in it: pass a text file, "
                            "a folder that holds .txt files, or a glob like 'books/*.md'")
        return found
    if _is_glob(spec):
        matches = sorted(Path(m) for m in glob.glob(spec, recursive=True))
        found = [p for m in matches for p in (_expand(str(m)) if m.is_dir() else [m])]
        if not found:
            raise DataError(f"no files match {spec!r}: check the pattern (quote it, so the shell leaves it to quill)")
        return found
    raise DataError(f"text file not found: {path} (check the path)")


# ---------------------------------------------------------------------------------------
# Reading one file
# ---------------------------------------------------------------------------------------


def _open(path: Path) -> BinaryIO:
    try:
        return open(path, "rb")  # noqa: SIM115 -- the caller closes it
    except PermissionError:
        raise DataError(f"cannot read {path}: permission denied (check the file's permissions)") from None
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from None


def read_file_blocks(path: Path) -> Iterator[str]:
    """Yield the text of one file in decoded blocks (BOM dropped), checking it as it goes."""
    with _open(path) as handle:
        zipped = handle.read(2) == GZIP_MAGIC
        handle.seek(0)
        stream: BinaryIO = gzip.GzipFile(fileobj=handle, mode="rb") if zipped else handle  # type: ignore[assignment]
        where = " of the decompressed text" if zipped else ""
        utf8 = codecs.getincrementaldecoder("utf-8")()
        offset, first = 0, True
        while True:
            try:
                raw = stream.read(READ_BLOCK)
            except (OSError, EOFError, zlib.error) as exc:
                raise DataError(f"{path} is not a valid gzip file ({exc}): download it again, or pass the "
                                "uncompressed text") from None
            pending = len(utf8.getstate()[0])
            try:
                text = utf8.decode(raw, final=not raw)
            except UnicodeDecodeError as exc:
                at = offset - pending + exc.start
                raise DataError(f"{path} is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {at}{where}): "
                                "convert it first, e.g. iconv -f latin1 -t utf-8") from None
            offset += len(raw)
            if "\x00" in text:
                raise DataError(f"{path} looks like a binary file (it contains NUL bytes): pass a text file")
            if first and text:
                text, first = text.removeprefix("\ufeff"), False
            if text:
                yield text
            if not raw:
                return


def read_source_blocks(source: TextSource) -> Iterator[str]:
    """All files of ``source`` as one text: each file ends with a newline (added if missing)."""
    for path in source.files:
        last = ""
        for text in read_file_blocks(path):
            last = text
            yield text
        if last and not last.endswith("\n") and len(source.files) > 1:
            yield "\n"


# ---------------------------------------------------------------------------------------
# Safe chunks for tokenizing piece by piece
# ---------------------------------------------------------------------------------------


def _is_safe_cut(text: str, at: int) -> bool:
    before = text[at - 1]
    return text[at] == "\n" and before.isascii() and not before.isspace()


def _find_cut(text: str, start: int, size: int) -> int:
    """A safe boundary near ``start + size``: the last one in the second half of the window,
    else the first one after it; -1 if the text has none yet."""
    at = text.rfind("\n", start + size // 2, start + size)
    while at > start:
        if _is_safe_cut(text, at):
            return at
        at = text.rfind("\n", start + size // 2, at)
    at = text.find("\n", start + size)
    while at != -1:
        if _is_safe_cut(text, at):
            return at
        at = text.find("\n", at + 1)
    return -1


def _fallback_cut(text: str, start: int, size: int) -> int:
    """For text without safe newlines: before the last space after a non-space, else anywhere."""
    at = text.rfind(" ", start + 1, start + size)
    while at > start:
        before = text[at - 1]
        if before.isascii() and not before.isspace():
            return at
        at = text.rfind(" ", start + 1, at)
    return start + size


@dataclass
class Chunker:
    """Regroup text blocks into pieces of about ``chunk_chars`` that end at safe boundaries."""

    chunk_chars: int = CHUNK_CHARS
    _buffer: list[str] = field(default_factory=list)
    _size: int = 0

    def feed(self, text: str) -> Iterator[str]:
        self._buffer.append(text)
        self._size += len(text)
        if self._size <= self.chunk_chars:
            return
        joined = "".join(self._buffer)
        start = 0
        while len(joined) - start > self.chunk_chars:
            cut = _find_cut(joined, start, self.chunk_chars)
            if cut < 0:
                if len(joined) - start < 8 * self.chunk_chars:
                    break  # wait for more text: a safe newline may come
                cut = _fallback_cut(joined, start, self.chunk_chars)
            yield joined[start:cut]
            start = cut
        self._buffer = [joined[start:]] if start < len(joined) else []
        self._size = len(joined) - start

    def finish(self) -> Iterator[str]:
        if self._size:
            yield "".join(self._buffer)
        self._buffer, self._size = [], 0


def safe_chunks(blocks: Iterable[str], chunk_chars: int = CHUNK_CHARS) -> Iterator[str]:
    """Regroup ``blocks`` into pieces ending at safe boundaries (see the module docstring)."""
    chunker = Chunker(chunk_chars)
    for block in blocks:
        yield from chunker.feed(block)
    yield from chunker.finish()
