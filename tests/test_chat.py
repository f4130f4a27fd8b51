import json

import pytest

from quillgpt.chat import (
    CHAT_TOKENS,
    Message,
    encode_conversation,
    has_chat_format,
    parse_messages,
    prompt_ids,
    read_conversations,
    reply_text,
)
from quillgpt.errors import DataError, TokenizerError
from quillgpt.tokenizers import BPETokenizer, CharTokenizer, tokenizer_from_dict


def chat_char_tokenizer() -> CharTokenizer:
    return CharTokenizer(list(" 0123456789?Whatisplu"), specials=CHAT_TOKENS)


def test_char_tokenizer_specials_come_after_the_characters_and_round_trip():
    tok = chat_char_tokenizer()
    assert tok.vocab_size == 21 + 4
    assert tok.special_ids == {"<|system|>": 21, "<|user|>": 22, "<|assistant|>": 23, "<|end|>": 24}
    assert tok.decode([tok.stoi["4"], 24]) == "4<|end|>"
    again = tokenizer_from_dict(json.loads(json.dumps(tok.to_dict())))
    assert again == tok and has_chat_format(again)
    assert not has_chat_format(CharTokenizer(list("ab")))
    assert tokenizer_from_dict(CharTokenizer(list("ab")).to_dict()) == CharTokenizer(list("ab"))
    with pytest.raises(TokenizerError):
        tok.decode([25])


def test_text_is_never_parsed_for_special_tokens():
    tok = CharTokenizer(list("<|>dne"), specials=CHAT_TOKENS)
    assert tok.encode("<|end|>") == [tok.stoi[c] for c in "<|end|>"]


def test_conversation_marks_only_assistant_content_and_its_end_as_trained():
    tok = chat_char_tokenizer()
    enc = encode_conversation(tok, [Message("user", "What is 1 plus 2?"), Message("assistant", "3")])
    special = tok.special_ids
    assert enc.ids[0] == special["<|user|>"] and enc.ids[-3:] == [special["<|assistant|>"], tok.stoi["3"],
                                                                   special["<|end|>"]]
    assert [tok.decode([i]) for i, t in zip(enc.ids, enc.trained, strict=True) if t] == ["3", "<|end|>"]
    prompt = prompt_ids(tok, [Message("user", "What is 1 plus 2?")])
    assert prompt == enc.ids[: len(prompt)] and prompt[-1] == special["<|assistant|>"]
    assert reply_text(tok, [tok.stoi["3"], special["<|end|>"], tok.stoi["9"]]) == "3"


def test_bpe_tokenizer_has_the_chat_format():
    tok = BPETokenizer.train(["What is 1 plus 2? 3"] * 5, vocab_size=270)
    enc = encode_conversation(tok, [Message("user", "hi"), Message("assistant", "3")])
    assert tok.decode(enc.ids) == "<|user|>hi<|end|><|assistant|>3<|end|>"


def test_encoding_without_chat_tokens_says_how_to_get_them():
    with pytest.raises(TokenizerError, match="quill sft"):
        encode_conversation(CharTokenizer(list("ab")), [Message("user", "a")])


def test_examples_in_both_shapes_and_clear_errors(tmp_path):
    both = tmp_path / "d.jsonl"
    both.write_text('{"prompt": "1+1", "response": "2"}\n\n'
                    '{"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"},'
                    ' {"role": "assistant", "content": "hello"}]}\n')
    first, second = read_conversations(both)
    assert first == [Message("user", "1+1"), Message("assistant", "2")]
    assert [m.role for m in second] == ["system", "user", "assistant"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "1+1", "response": "2"}\n{not json\n')
    with pytest.raises(DataError, match="line 2 is not valid JSON"):
        read_conversations(bad)
    with pytest.raises(DataError, match="'role'"):
        parse_messages({"messages": [{"role": "robot", "content": "x"}]}, "x")
    with pytest.raises(DataError, match="no assistant message"):
        parse_messages({"messages": [{"role": "user", "content": "x"}]}, "x")
    with pytest.raises(DataError, match="no such file"):
        read_conversations(tmp_path / "missing.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(DataError, match="no examples"):
        read_conversations(tmp_path / "empty.jsonl")
