"""Tokenizers: text <-> integer ids.

``CharTokenizer`` is the lecture's: the vocabulary is the sorted set of characters in the
corpus (65 for Tiny Shakespeare) and each character is one token. A tokenizer is saved as
JSON inside every prepared dataset and run directory, so a run can always decode itself.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from quillgpt.errors import TokenizerError

FORMAT_VERSION = 1


class CharTokenizer:
    """One token per character, ids in sorted character order."""

    kind = "char"

    def __init__(self, chars: Sequence[str]) -> None:
        chars = list(chars)
        if not chars:
            raise TokenizerError("a character tokenizer needs at least one character: the text is empty")
        if any(len(c) != 1 for c in chars) or len(set(chars)) != len(chars):
            raise TokenizerError("a character vocabulary must be distinct single characters")
        self.chars = chars
        self.stoi = {c: i for i, c in enumerate(chars)}

    @classmethod
    def from_text(cls, text: str) -> CharTokenizer:
        return cls(sorted(set(text)))

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> list[int]:
        try:
            return [self.stoi[c] for c in text]
        except KeyError as missing:
            char = missing.args[0]
            raise TokenizerError(
                f"character {char!r} (U+{ord(char):04X}) is not in the vocabulary of "
                f"{self.vocab_size} characters: remove it from the text, or train on text that has it"
            ) from None

    def decode(self, ids: Iterable[int]) -> str:
        try:
            return "".join(self.chars[i] for i in ids)
        except IndexError:
            raise TokenizerError(f"token id outside the vocabulary (size {self.vocab_size})") from None

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "version": FORMAT_VERSION, "chars": "".join(self.chars)}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CharTokenizer) and other.chars == self.chars


def tokenizer_from_dict(data: Any) -> CharTokenizer:
    """Rebuild a tokenizer from its JSON form, validating it first."""
    if not isinstance(data, dict) or data.get("kind") != "char":
        kind = data.get("kind") if isinstance(data, dict) else type(data).__name__
        raise TokenizerError(f"unknown tokenizer kind {kind!r}: expected 'char'")
    if data.get("version") != FORMAT_VERSION:
        raise TokenizerError(f"tokenizer format version {data.get('version')!r} is not supported "
                             f"(this quillgpt reads version {FORMAT_VERSION})")
    chars = data.get("chars")
    if not isinstance(chars, str):
        raise TokenizerError("tokenizer JSON has no 'chars' string")
    return CharTokenizer(list(chars))
