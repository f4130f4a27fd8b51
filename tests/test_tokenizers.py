import pytest
from hypothesis import given
from hypothesis import strategies as st

from quillgpt.errors import TokenizerError
from quillgpt.tokenizers import CharTokenizer, tokenizer_from_dict


@given(st.text(min_size=1))
def test_char_round_trip_on_any_text(text: str) -> None:
    tok = CharTokenizer.from_text(text)
    assert tok.decode(tok.encode(text)) == text
    assert tok.vocab_size == len(set(text))


@given(st.text(min_size=1), st.text())
def test_json_round_trip_keeps_the_mapping(corpus: str, probe: str) -> None:
    tok = CharTokenizer.from_text(corpus)
    again = tokenizer_from_dict(tok.to_dict())
    assert again == tok
    known = "".join(c for c in probe if c in tok.stoi)
    assert again.encode(known) == tok.encode(known)


def test_ids_follow_sorted_characters() -> None:
    tok = CharTokenizer.from_text("hello world")
    assert tok.chars == sorted(set("hello world"))
    assert tok.encode(" ") == [0]


def test_unknown_character_is_named() -> None:
    tok = CharTokenizer.from_text("abc")
    with pytest.raises(TokenizerError, match=r"'z'.*U\+007A"):
        tok.encode("abz")


def test_empty_vocabulary_is_rejected() -> None:
    with pytest.raises(TokenizerError, match="empty"):
        CharTokenizer.from_text("")


@pytest.mark.parametrize("bad", [None, [], {"kind": "bpe"}, {"kind": "char", "version": 99, "chars": "ab"},
                                 {"kind": "char", "version": 1}, {"kind": "char", "version": 1, "chars": "aa"}])
def test_bad_json_is_rejected(bad: object) -> None:
    with pytest.raises(TokenizerError):
        tokenizer_from_dict(bad)
