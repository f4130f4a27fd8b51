"""The chat format: conversations as token ids, with a mask of the tokens a model learns to say.

A conversation is a list of messages ``{"role": "system"|"user"|"assistant", "content": str}``.
Each message is its role's special token, the content's tokens, then ``<|end|>``:

    <|user|>What is 17 plus 26?<|end|><|assistant|>43<|end|>

The special tokens are inserted by this code, never parsed out of text, so a user who types
``<|end|>`` into a prompt gets those characters, not the token. To ask a model for a reply,
the conversation is rendered and followed by ``<|assistant|>``; the reply ends at ``<|end|>``.

For supervised finetuning only the assistant's tokens (its content and its ``<|end|>``, so it
learns to stop) carry a loss; the rest is context (as in InstructGPT's SFT, Ouyang et al. 2022,
and nanochat's ``chat_sft``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from quillgpt.errors import DataError, TokenizerError
from quillgpt.tokenizers import CharTokenizer, Tokenizer

ROLES = ("system", "user", "assistant")
ROLE_TOKENS = {"system": "<|system|>", "user": "<|user|>", "assistant": "<|assistant|>"}
END = "<|end|>"
CHAT_TOKENS = (*ROLE_TOKENS.values(), END)


def has_chat_format(tokenizer: Tokenizer) -> bool:
    """Whether the tokenizer has every chat special token (a BPE quill trained does, GPT-2's does not)."""
    return all(name in tokenizer.special_ids for name in CHAT_TOKENS)


def require_chat_format(tokenizer: Tokenizer, where: str) -> dict[str, int]:
    if not has_chat_format(tokenizer):
        raise TokenizerError(f"{where} has no chat tokens ({' '.join(CHAT_TOKENS)}): finetune it on "
                             "conversations first with quill sft")
    return tokenizer.special_ids


@dataclass(frozen=True)
class Message:
    role: str
    content: str


@dataclass(frozen=True)
class Encoded:
    """Token ids of a conversation and, per id, whether the model is trained to produce it."""

    ids: list[int]
    trained: list[bool]


def encode_conversation(tokenizer: Tokenizer, messages: Sequence[Message],
                        add_generation_prompt: bool = False) -> Encoded:
    """Render ``messages`` as ids; mark the assistant's content and closing ``<|end|>`` as trained.

    With ``add_generation_prompt`` the ids end with ``<|assistant|>``, ready for sampling a reply.
    """
    special = require_chat_format(tokenizer, "this tokenizer")
    ids: list[int] = []
    trained: list[bool] = []
    for message in messages:
        content = tokenizer.encode(message.content)
        learn = message.role == "assistant"
        ids += [special[ROLE_TOKENS[message.role]], *content, special[END]]
        trained += [False] + [learn] * (len(content) + 1)
    if add_generation_prompt:
        ids.append(special[ROLE_TOKENS["assistant"]])
        trained.append(False)
    return Encoded(ids, trained)


def prompt_ids(tokenizer: Tokenizer, messages: Sequence[Message]) -> list[int]:
    """The ids a model continues to answer the conversation's last message."""
    return encode_conversation(tokenizer, messages, add_generation_prompt=True).ids


def end_id(tokenizer: Tokenizer) -> int:
    return require_chat_format(tokenizer, "this tokenizer")[END]


def reply_text(tokenizer: Tokenizer, ids: Sequence[int]) -> str:
    """Decode a sampled reply up to (not including) its first ``<|end|>``."""
    stop = end_id(tokenizer)
    ids = list(ids)
    if stop in ids:
        ids = ids[: ids.index(stop)]
    return tokenizer.decode(ids)


def parse_messages(record: Any, where: str) -> list[Message]:
    """Read one example: ``{"messages": [{"role", "content"}, ...]}`` or ``{"prompt", "response"}``."""
    if isinstance(record, dict) and "messages" in record:
        raw = record["messages"]
        if not isinstance(raw, list) or not raw:
            raise DataError(f"{where}: 'messages' must be a non-empty list of {{role, content}} objects")
        messages = [_message(item, f"{where} message {i + 1}") for i, item in enumerate(raw)]
    elif isinstance(record, dict) and {"prompt", "response"} <= record.keys():
        messages = [_message({"role": "user", "content": record["prompt"]}, where),
                    _message({"role": "assistant", "content": record["response"]}, where)]
    else:
        raise DataError(f"{where}: expected an object with 'messages' or with 'prompt' and 'response'")
    if not any(m.role == "assistant" for m in messages):
        raise DataError(f"{where}: no assistant message, so nothing to learn from: add one")
    return messages


def _message(item: Any, where: str) -> Message:
    if not isinstance(item, dict) or item.get("role") not in ROLES or not isinstance(item.get("content"), str):
        raise DataError(f"{where}: a message needs 'role' (one of {', '.join(ROLES)}) and a 'content' string")
    return Message(item["role"], item["content"])


def read_jsonl(path: str | Path) -> Iterator[tuple[int, Any]]:
    """Yield (line number, parsed JSON) for each non-blank line, with one-line errors."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"no such file: {path}: give a JSONL file, one JSON object per line")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise DataError(f"{path} is not UTF-8 text: save it as UTF-8 JSONL") from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            yield number, json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path} line {number} is not valid JSON ({exc.msg}): one JSON object per line") from None


def read_conversations(path: str | Path) -> list[list[Message]]:
    conversations = [parse_messages(record, f"{path} line {n}") for n, record in read_jsonl(path)]
    if not conversations:
        raise DataError(f"{path} has no examples: add JSONL lines like "
                        '{"prompt": "What is 2 plus 2?", "response": "4"}')
    return conversations


def with_chat_tokens(base: Tokenizer | None, text: str) -> Tokenizer:
    """A tokenizer that encodes ``text`` and has the chat tokens, keeping every id of ``base``.

    A BPE already has both. A character tokenizer gets the missing characters and then the
    missing chat tokens appended, so a model trained with ``base`` keeps its embeddings (see
    ``pretrained.adapt_vocabulary``). With no base, the characters of ``text`` in sorted order.
    """
    if base is not None and not isinstance(base, CharTokenizer):
        require_chat_format(base, "the tokenizer")
        return base
    chars = list(base.chars) if base else []
    specials = list(base.specials) if base else []
    chars += sorted(set(text) - set(chars))
    specials += [name for name in CHAT_TOKENS if name not in specials]
    return CharTokenizer(chars, specials)
