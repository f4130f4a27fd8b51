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

A BPE that quill trains has its special tokens at fixed ids 0..5, ahead of the bytes:

    <|endoftext|>  0   end of a document
    <|pad|>        1   padding in batches of unequal length
    <|system|>     2   chat: a system message starts
    <|user|>       3   chat: a user turn starts
    <|assistant|>  4   chat: an assistant turn starts
    <|end|>        5   chat: a turn ends

Any other byte-level BPE loads too, with its ids kept exactly as its JSON has them (a
model's embedding rows follow them): GPT-2's tokenizer has 50,256 byte-level tokens and then
``<|endoftext|>`` at id 50256 as its only special token. The special tokens and their ids are
read from the JSON's ``added_tokens``, so code asks ``special_ids`` for an id by name; a
tokenizer without the chat tokens is refused, in one line, by the commands that need them
(``chat.require_chat_format``).

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
    """Byte-level BPE: Hugging Face ``tokenizers`` trains and encodes; decoding is ours (bytes).

    ``train`` makes quill's layout (``SPECIAL_TOKENS`` at ids 0-5); loading takes any byte-level
    BPE without normalizer or prefix space, such as GPT-2's, and keeps its ids and its special
    tokens (``specials``: name -> id, from ``added_tokens``) as they are.
    """

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
        self.specials = self._check_layout(hf_json)
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
        tokenizer = cls(json.loads(hf.to_str()))
        # What quill makes has the reserved layout, so its own datasets and chat runs can rely on it.
        if tokenizer.specials != {name: i for i, name in enumerate(SPECIAL_TOKENS)}:
            raise TokenizerError(f"the trained BPE does not have {', '.join(SPECIAL_TOKENS)} at ids 0-5 "
                                 f"({tokenizer.specials}): the tokenizers library changed how it numbers them")
        return tokenizer

    def _check_layout(self, hf_json: dict[str, Any]) -> dict[str, int]:
        """Refuse what quill cannot decode byte for byte; return the special tokens, name -> id."""
        pre = hf_json.get("pre_tokenizer") or {}
        model = hf_json.get("model") or {}
        if model.get("type") != "BPE" or pre.get("type") != "ByteLevel" or pre.get("add_prefix_space") \
                or hf_json.get("normalizer"):
            raise TokenizerError("the tokenizer JSON is not a byte-level BPE without normalizer or prefix "
                                 "space: make it with quill prepare --tokenizer bpe")
        specials: dict[str, int] = {}
        for token in hf_json.get("added_tokens") or []:
            # A non-special added token would be matched inside text, which byte-level decoding
            # cannot account for; GPT-2-family tokenizers have none.
            if not token.get("special"):
                raise TokenizerError(f"added token {token.get('content')!r} is not a special token: quill "
                                     "takes byte-level BPEs whose added tokens are all special")
            specials[token["content"]] = token["id"]
        # Every byte must be a token, or text with that byte would silently lose it.
        missing = [c for c in byte_alphabet().values() if self.hf.token_to_id(c) is None]
        if missing:
            raise TokenizerError(f"{len(missing)} of the 256 byte tokens are missing from the tokenizer JSON "
                                 f"(e.g. {missing[0]!r}): it cannot encode every text")
        return dict(sorted(specials.items(), key=lambda item: item[1]))

    def _token_byte_table(self) -> list[bytes]:
        to_byte = {char: b for b, char in byte_alphabet().items()}
        special_names = {token_id: name for name, token_id in self.specials.items()}
        table = []
        for token_id in range(self.vocab_size):
            token = self.hf.id_to_token(token_id)
            if token is None:
                raise TokenizerError(f"token id {token_id} is missing from the tokenizer JSON: prepare the data again")
            if token_id in special_names:  # stands for no bytes of text; shown by its name
                table.append(special_names[token_id].encode("utf-8"))
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
        return dict(self.specials)

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
        # special_tokens: the names in id order (quill's six for what quill trained), checked on load.
        return {"kind": self.kind, "version": FORMAT_VERSION, "special_tokens": list(self.specials),
                "hf_tokenizer": self._hf_json}

    def describe(self) -> str:
        if self.specials == {name: i for i, name in enumerate(SPECIAL_TOKENS)}:
            return f"bpe, vocab {self.vocab_size}"
        shown = ", ".join(f"{name} {token_id}" for name, token_id in self.specials.items()) or "none"
        return f"bpe, vocab {self.vocab_size}, special tokens: {shown}"

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
        names = data.get("special_tokens")
        if not isinstance(names, list) or not isinstance(data.get("hf_tokenizer"), dict):
            raise TokenizerError("BPE tokenizer JSON needs 'special_tokens' (a list of names) and an "
                                 "'hf_tokenizer' object: prepare the data again")
        tokenizer = BPETokenizer(data["hf_tokenizer"])
        if names != list(tokenizer.specials):
            raise TokenizerError(f"BPE tokenizer JSON lists special tokens {names} but its 'hf_tokenizer' has "
                                 f"{list(tokenizer.specials)}: prepare the data again")
        return tokenizer
    chars, specials = data.get("chars"), data.get("special_tokens", [])
    if not isinstance(chars, str):
        raise TokenizerError("tokenizer JSON has no 'chars' string")
    if not isinstance(specials, list) or not all(isinstance(name, str) for name in specials):
        raise TokenizerError("tokenizer JSON 'special_tokens' must be a list of names")
    return CharTokenizer(list(chars), specials)
