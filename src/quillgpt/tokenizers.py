"""Tokenizers: text <-> integer ids.

Two kinds, both saved as JSON inside every prepared dataset (``meta.json``), run
directory and checkpoint (``tokenizer.json``), so a run can always decode itself, offline:

- ``CharTokenizer`` is the lecture's: the vocabulary is the sorted set of characters in
  the corpus (65 for Tiny Shakespeare) and each character is one token. It has no special
  tokens, and cannot encode a character it has not seen.
- ``BPETokenizer`` is a byte-level BPE trained with Hugging Face ``tokenizers``: the 256
  byte values are always in the vocabulary, so any text, in any script, encodes, and
  decoding gives back exactly the text that was encoded. On top of them come the merges
  learned from the corpus and the special tokens below.

Special tokens of the BPE have fixed ids 0..5, ahead of the bytes, so later features can
rely on them:

    <|endoftext|>  0   end of a document
    <|pad|>        1   padding in batches of unequal length
    <|system|>     2   chat: a system message starts
    <|user|>       3   chat: a user turn starts
    <|assistant|>  4   chat: an assistant turn starts
    <|end|>        5   chat: a turn ends

A character tokenizer may carry special tokens too (``specials``), appended after its
characters so that adding them to a trained model keeps every existing id: ``quill sft``
adds the chat tokens this way (see ``quillgpt.chat``).

Text is never parsed for special tokens: a corpus or prompt that contains the characters
``<|endoftext|>`` encodes them as ordinary bytes, so only code (never data) can insert a
special token.
"""

from __future__ import annotations

import codecs
import json
from collections.abc import Iterable, Sequence
from functools import cached_property
from typing import Any

import numpy as np

from quillgpt.errors import TokenizerError

FORMAT_VERSION = 1
SPECIAL_TOKENS = ("<|endoftext|>", "<|pad|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>")
MIN_BPE_VOCAB = len(SPECIAL_TOKENS) + 256  # the specials and the 256 bytes, no merges
MAX_BPE_VOCAB = 1_000_000


class CharTokenizer:
    """One token per character, ids in sorted character order."""

    kind = "char"

    def __init__(self, chars: Sequence[str], specials: Sequence[str] = ()) -> None:
        chars, specials = list(chars), list(specials)
        if not chars:
            raise TokenizerError("a character tokenizer needs at least one character: the text is empty")
        if any(len(c) != 1 for c in chars) or len(set(chars)) != len(chars):
            raise TokenizerError("a character vocabulary must be distinct single characters")
        if any(s not in SPECIAL_TOKENS for s in specials) or len(set(specials)) != len(specials):
            raise TokenizerError(f"special tokens must be distinct names from {', '.join(SPECIAL_TOKENS)}")
        self.chars = chars
        self.specials = specials
        self.stoi = {c: i for i, c in enumerate(chars)}

    @classmethod
    def from_text(cls, text: str) -> CharTokenizer:
        return cls(sorted(set(text)))

    @property
    def vocab_size(self) -> int:
        return len(self.chars) + len(self.specials)

    @property
    def special_ids(self) -> dict[str, int]:
        return {name: len(self.chars) + i for i, name in enumerate(self.specials)}  # the lecture's has none

    def encode(self, text: str) -> list[int]:
        try:
            return [self.stoi[c] for c in text]
        except KeyError as missing:
            raise self._unknown(missing.args[0]) from None

    def encode_many(self, texts: Sequence[str]) -> list[np.ndarray]:
        """Encode several texts into int64 arrays, vectorized (for preparing large corpora)."""
        out = []
        for text in texts:
            codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
            ids = self._lookup[codes]
            if len(ids) and ids.min() < 0:
                raise self._unknown(text[int(np.argmax(ids < 0))])
            out.append(ids)
        return out

    @cached_property
    def _lookup(self) -> np.ndarray:
        # code point -> id (-1: not in the vocabulary); 4.4 MB, built once per tokenizer.
        table = np.full(0x110000, -1, dtype=np.int64)
        table[[ord(c) for c in self.chars]] = np.arange(len(self.chars))
        return table

    def _unknown(self, char: str) -> TokenizerError:
        return TokenizerError(
            f"character {char!r} (U+{ord(char):04X}) is not in the vocabulary of "
            f"{self.vocab_size} characters: remove it from the text, or train on text that has it "
            "(a bpe tokenizer encodes any character)")

    def decode(self, ids: Iterable[int]) -> str:
        return "".join(self._token_text(i) for i in ids)

    def _token_text(self, token_id: int) -> str:
        if 0 <= token_id < len(self.chars):
            return self.chars[token_id]
        if 0 <= token_id - len(self.chars) < len(self.specials):
            return self.specials[token_id - len(self.chars)]
        raise TokenizerError(f"token id {token_id} is outside the vocabulary (size {self.vocab_size})")

    def token_bytes(self, token_id: int) -> bytes:
        return self._token_text(token_id).encode("utf-8")

    def start_ids(self) -> list[int]:
        """What an unprompted sample starts from: a newline if the vocabulary has one."""
        return [self.stoi.get("\n", 0)]

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"kind": self.kind, "version": FORMAT_VERSION, "chars": "".join(self.chars)}
        if self.specials:
            data["special_tokens"] = list(self.specials)
        return data

    def describe(self) -> str:
        extra = f" + {len(self.specials)} special" if self.specials else ""
        return f"char, vocab {self.vocab_size}{extra}"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CharTokenizer) and (other.chars, other.specials) == (self.chars, self.specials)


# ---------------------------------------------------------------------------------------
# Byte-level BPE
# ---------------------------------------------------------------------------------------


def byte_alphabet() -> dict[int, str]:
    """The printable stand-in character of each byte in byte-level BPE (GPT-2's mapping).

    BPE merges strings, and the library works on Unicode strings, so each byte is shown
    as one visible character: printable Latin-1 bytes stand for themselves, the other 68
    (control characters, space, ...) are moved to U+0100 and up, in byte order.
    """
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("\u00a1"), ord("\u00ac") + 1),
            *range(ord("\u00ae"), ord("\u00ff") + 1)]
    alphabet = {b: chr(b) for b in keep}
    moved = (b for b in range(256) if b not in alphabet)
    for offset, b in enumerate(moved):
        alphabet[b] = chr(256 + offset)
    return alphabet


class BPETokenizer:
    """Byte-level BPE: Hugging Face ``tokenizers`` trains and encodes; decoding is ours (bytes)."""

    kind = "bpe"

    def __init__(self, hf_json: dict[str, Any]) -> None:
        from tokenizers import Tokenizer

        try:
            self.hf = Tokenizer.from_str(json.dumps(hf_json))
        except Exception as exc:  # the library raises plain Exceptions for malformed JSON
            raise TokenizerError(f"the BPE tokenizer JSON cannot be loaded ({str(exc)[:120]}): "
                                 "prepare the data again") from None
        self.hf.encode_special_tokens = True  # text never turns into special tokens
        self._hf_json = hf_json
        self._check_layout(hf_json)
        self._bytes = self._token_byte_table()

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int) -> BPETokenizer:
        """Learn merges from ``texts`` until the vocabulary has ``vocab_size`` tokens (or no pair repeats)."""
        check_bpe_vocab_size(vocab_size)
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        hf = Tokenizer(models.BPE())
        # GPT-2's split into words, numbers, punctuation and spaces before merging; no
        # prefix space and no normalizer, so decoding gives back the exact text.
        hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        hf.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
        hf.train_from_iterator(texts, trainer)
        return cls(json.loads(hf.to_str()))

    def _check_layout(self, hf_json: dict[str, Any]) -> None:
        pre = hf_json.get("pre_tokenizer") or {}
        if pre.get("type") != "ByteLevel" or pre.get("add_prefix_space") or hf_json.get("normalizer"):
            raise TokenizerError("the tokenizer JSON is not a byte-level BPE without normalizer or prefix "
                                 "space: make it with quill prepare --tokenizer bpe")
        for token_id, name in enumerate(SPECIAL_TOKENS):
            if self.hf.token_to_id(name) != token_id:
                raise TokenizerError(f"special token {name} is not id {token_id} in the tokenizer JSON: "
                                     "make it with quill prepare --tokenizer bpe")

    def _token_byte_table(self) -> list[bytes]:
        to_byte = {char: b for b, char in byte_alphabet().items()}
        table = []
        for token_id in range(self.vocab_size):
            token = self.hf.id_to_token(token_id)
            if token is None:
                raise TokenizerError(f"token id {token_id} is missing from the tokenizer JSON: prepare the data again")
            if token_id < len(SPECIAL_TOKENS):
                table.append(token.encode("utf-8"))
                continue
            try:
                table.append(bytes(to_byte[c] for c in token))
            except KeyError:
                raise TokenizerError(f"token {token!r} is not made of byte-level characters: "
                                     "the tokenizer JSON is not a byte-level BPE") from None
        return table

    @property
    def vocab_size(self) -> int:
        return self.hf.get_vocab_size(with_added_tokens=True)

    @property
    def special_ids(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(SPECIAL_TOKENS)}

    def encode(self, text: str) -> list[int]:
        return self.hf.encode(text).ids

    def encode_many(self, texts: Sequence[str]) -> list[np.ndarray]:
        """Encode several texts at once; the library spreads them over the CPU cores."""
        return [np.asarray(e.ids, dtype=np.int64) for e in self.hf.encode_batch_fast(list(texts))]

    def token_bytes(self, token_id: int) -> bytes:
        return self._bytes[token_id]

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        try:
            return b"".join(self._bytes[i] for i in ids)
        except (IndexError, TypeError):
            raise TokenizerError(f"token id outside the vocabulary (size {self.vocab_size})") from None

    def decode(self, ids: Iterable[int]) -> str:
        # Arbitrary ids (a sample) may end inside a character: such bytes show as U+FFFD.
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def start_ids(self) -> list[int]:
        return self.encode("\n")

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "version": FORMAT_VERSION, "special_tokens": list(SPECIAL_TOKENS),
                "hf_tokenizer": self._hf_json}

    def describe(self) -> str:
        return f"bpe, vocab {self.vocab_size}"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, BPETokenizer) and other._hf_json == self._hf_json


Tokenizer = CharTokenizer | BPETokenizer
KINDS = ("char", "bpe")


def check_bpe_vocab_size(vocab_size: int) -> None:
    if not MIN_BPE_VOCAB <= vocab_size <= MAX_BPE_VOCAB:
        raise TokenizerError(
            f"--vocab-size {vocab_size} is out of range for a byte-level BPE: it needs at least {MIN_BPE_VOCAB} "
            f"(256 bytes + {len(SPECIAL_TOKENS)} special tokens) and at most {MAX_BPE_VOCAB:,}; try 2048 or 8192")


class StreamDecoder:
    """Turn tokens into text one at a time, holding back bytes of a character not yet complete.

    A byte-level BPE token can end in the middle of a UTF-8 character, so decoding each
    sampled token on its own would print U+FFFD where the next token completes the character.
    """

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, ids: Iterable[int]) -> str:
        return self._utf8.decode(b"".join(self.tokenizer.token_bytes(i) for i in ids))

    def flush(self) -> str:
        return self._utf8.decode(b"", final=True)


def covered_text_tables(tokenizer: Tokenizer) -> tuple[np.ndarray, np.ndarray]:
    """For each token id: how many UTF-8 bytes and how many characters of text it stands for.

    A character is counted at the token holding its first byte (bytes 0x80-0xBF continue
    a character), so the counts over any run of tokens add up exactly. Special tokens
    stand for no text.
    """
    n_bytes = np.zeros(tokenizer.vocab_size, dtype=np.int64)
    n_chars = np.zeros(tokenizer.vocab_size, dtype=np.int64)
    specials = set(tokenizer.special_ids.values())
    for token_id in range(tokenizer.vocab_size):
        if token_id in specials:
            continue
        raw = tokenizer.token_bytes(token_id)
        n_bytes[token_id] = len(raw)
        n_chars[token_id] = sum(1 for b in raw if not 0x80 <= b <= 0xBF)
    return n_bytes, n_chars


def tokenizer_from_dict(data: Any) -> Tokenizer:
    """Rebuild a tokenizer from its JSON form, validating it first."""
    kind = data.get("kind") if isinstance(data, dict) else type(data).__name__
    if kind not in KINDS:
        raise TokenizerError(f"unknown tokenizer kind {kind!r}: expected one of {', '.join(KINDS)}")
    if data.get("version") != FORMAT_VERSION:
        raise TokenizerError(f"tokenizer format version {data.get('version')!r} is not supported "
                             f"(this quillgpt reads version {FORMAT_VERSION})")
    if kind == "bpe":
        if data.get("special_tokens") != list(SPECIAL_TOKENS) or not isinstance(data.get("hf_tokenizer"), dict):
            raise TokenizerError("BPE tokenizer JSON needs 'special_tokens' (the reserved list) and an "
                                 "'hf_tokenizer' object: prepare the data again")
        return BPETokenizer(data["hf_tokenizer"])
    chars, specials = data.get("chars"), data.get("special_tokens", [])
    if not isinstance(chars, str):
        raise TokenizerError("tokenizer JSON has no 'chars' string")
    if not isinstance(specials, list) or not all(isinstance(name, str) for name in specials):
        raise TokenizerError("tokenizer JSON 'special_tokens' must be a list of names")
    return CharTokenizer(list(chars), specials)
