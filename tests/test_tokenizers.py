import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quillgpt.errors import TokenizerError
from quillgpt.tokenizers import (
    MIN_BPE_VOCAB,
    SPECIAL_TOKENS,
    BPETokenizer,
    CharTokenizer,
    StreamDecoder,
    byte_alphabet,
    covered_text_tables,
    tokenizer_from_dict,
)


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


# ---------------------------------------------------------------------------------------
# Byte-level BPE
# ---------------------------------------------------------------------------------------

ENGLISH = ("First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n" * 20
           + "the king shall speak to thee and thou art my lord good night sweet prince\n" * 20)


@pytest.fixture(scope="module")
def bpe() -> BPETokenizer:
    return BPETokenizer.train([ENGLISH], vocab_size=400)


@settings(max_examples=300, deadline=None)
@given(text=st.text())
def test_bpe_round_trip_on_any_unicode(bpe: BPETokenizer, text: str) -> None:
    # Trained on ASCII English: almost every character hypothesis draws was never seen.
    ids = bpe.encode(text)
    assert bpe.decode(ids) == text
    assert all(0 <= i < bpe.vocab_size for i in ids)
    assert [a.tolist() for a in bpe.encode_many([text, text[::-1]])] == [ids, bpe.encode(text[::-1])]
    n_bytes, n_chars = covered_text_tables(bpe)
    assert int(n_bytes[ids].sum()) == len(text.encode("utf-8"))
    assert int(n_chars[ids].sum()) == len(text)


@settings(max_examples=50, deadline=None)
@given(text=st.text(st.characters(codec="utf-8"), max_size=40))
def test_bpe_stream_decoder_prints_whole_characters(bpe: BPETokenizer, text: str) -> None:
    decoder = StreamDecoder(bpe)
    pieces = [decoder.feed([i]) for i in bpe.encode(text)]
    assert "".join(pieces) + decoder.flush() == text
    assert all("\ufffd" not in p for p in pieces) or "\ufffd" in text


def test_bpe_learns_merges_and_reserves_special_tokens(bpe: BPETokenizer) -> None:
    assert MIN_BPE_VOCAB < bpe.vocab_size <= 400  # this small text has fewer pairs to merge
    assert bpe.special_ids == {name: i for i, name in enumerate(SPECIAL_TOKENS)}
    assert len(bpe.encode(" speak")) == 1  # a frequent word (with its leading space) is one token
    assert len(bpe.encode("Zebra")) > 1  # an unseen one falls back to smaller pieces
    # Text that spells a special token stays text: only code can insert the real one.
    ids = bpe.encode("<|endoftext|>")
    assert not set(ids) & set(bpe.special_ids.values())
    assert bpe.decode(ids) == "<|endoftext|>"
    assert bpe.decode([0]) == "<|endoftext|>"


def test_byte_alphabet_is_the_libraries() -> None:
    from tokenizers import pre_tokenizers

    alphabet = byte_alphabet()
    assert sorted(alphabet) == list(range(256))
    assert sorted(alphabet.values()) == sorted(pre_tokenizers.ByteLevel.alphabet())


def test_bpe_json_round_trip_without_network(bpe: BPETokenizer) -> None:
    data = json.loads(json.dumps(bpe.to_dict()))
    again = tokenizer_from_dict(data)
    assert isinstance(again, BPETokenizer) and again == bpe
    text = "Speak, speak! \u00e9t\u00e9 \U0001f600"
    assert again.encode(text) == bpe.encode(text)
    assert bpe != BPETokenizer.train([ENGLISH[::-1]], vocab_size=400)
    assert bpe != CharTokenizer.from_text("abc")


@pytest.mark.parametrize("size", [0, 100, MIN_BPE_VOCAB - 1, 2_000_000])
def test_bpe_vocab_size_out_of_range(size: int) -> None:
    with pytest.raises(TokenizerError, match=f"--vocab-size {size} is out of range.*at least {MIN_BPE_VOCAB}"):
        BPETokenizer.train(["some text"], vocab_size=size)


def test_bpe_on_little_text_has_only_the_merges_it_finds() -> None:
    tok = BPETokenizer.train(["ab ab ab"], vocab_size=5000)
    assert MIN_BPE_VOCAB < tok.vocab_size < 300
    assert tok.decode(tok.encode("ab ab \u4e2d")) == "ab ab \u4e2d"


@pytest.mark.parametrize("change", [
    lambda d: d.update(special_tokens=["<|x|>"]),
    lambda d: d.update(hf_tokenizer="not an object"),
    lambda d: d["hf_tokenizer"].update(pre_tokenizer={"type": "Whitespace"}),
    lambda d: d["hf_tokenizer"]["model"].update(vocab={"a": 0}),
    lambda d: d["hf_tokenizer"]["model"].update(merges=[["x", "y", "z"]]),
])
def test_broken_bpe_json_is_rejected(bpe: BPETokenizer, change) -> None:
    data = json.loads(json.dumps(bpe.to_dict()))
    change(data)
    with pytest.raises(TokenizerError):
        tokenizer_from_dict(data)


def test_char_encode_many_matches_encode() -> None:
    tok = CharTokenizer.from_text("hello world\n")
    assert [a.tolist() for a in tok.encode_many(["hello", "", "world\n"])] == [tok.encode("hello"), [],
                                                                               tok.encode("world\n")]
    with pytest.raises(TokenizerError, match=r"'\\u4e2d'|'\u4e2d'"):
        tok.encode_many(["hello \u4e2d"])


# GPT-2's layout: byte tokens and merges first, <|endoftext|> last and the only special token.

EOT = "<|endoftext|>"


def gpt2_layout_json(texts: list[str], vocab_size: int = 300) -> dict:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    hf = Tokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    hf.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[], show_progress=False,
                                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    hf.add_special_tokens([EOT])  # numbered after everything else, as in GPT-2 (50256)
    return json.loads(hf.to_str())


@pytest.fixture(scope="module")
def gpt2_layout() -> BPETokenizer:
    return BPETokenizer(gpt2_layout_json([ENGLISH]))


@settings(max_examples=50, deadline=None)
@given(st.text())
def test_gpt2_layout_round_trips_any_text(gpt2_layout: BPETokenizer, text: str) -> None:
    ids = gpt2_layout.encode(text)
    assert gpt2_layout.decode(ids) == text
    assert gpt2_layout.vocab_size - 1 not in ids  # text never becomes <|endoftext|>


def test_gpt2_layout_keeps_its_ids_and_its_one_special_token(gpt2_layout: BPETokenizer) -> None:
    data = gpt2_layout.to_dict()["hf_tokenizer"]
    last = gpt2_layout.vocab_size - 1
    assert gpt2_layout.special_ids == {EOT: last} and last > 256
    assert gpt2_layout.decode([last]) == EOT and gpt2_layout.token_bytes(last) == EOT.encode()
    for token, token_id in data["model"]["vocab"].items():  # every id is the JSON's own
        assert gpt2_layout.hf.id_to_token(token_id) == token
    n_bytes, _ = covered_text_tables(gpt2_layout)
    assert n_bytes[last] == 0 and n_bytes[:last].min() >= 1  # the special token stands for no text
    assert "special tokens: <|endoftext|>" in gpt2_layout.describe()
    again = tokenizer_from_dict(json.loads(json.dumps(gpt2_layout.to_dict())))
    assert again == gpt2_layout and again.special_ids == {EOT: last}
    assert gpt2_layout.to_dict()["special_tokens"] == [EOT]


@pytest.mark.parametrize(("change", "message"), [
    (lambda d: d["added_tokens"][0].update(special=False), "not a special token"),
    (lambda d: d["model"]["vocab"].pop("\u00ff"), "byte tokens are missing"),  # no merge uses it
    (lambda d: d["pre_tokenizer"].update(add_prefix_space=True), "prefix space"),
    (lambda d: d.update(normalizer={"type": "Lowercase"}), "normalizer"),
])
def test_gpt2_layout_that_cannot_round_trip_is_refused(change, message: str) -> None:
    data = gpt2_layout_json([ENGLISH])
    change(data)
    with pytest.raises(TokenizerError, match=message):
        BPETokenizer(data)


def test_saved_special_token_names_must_match_the_json(gpt2_layout: BPETokenizer) -> None:
    data = json.loads(json.dumps(gpt2_layout.to_dict()))
    data["special_tokens"] = list(SPECIAL_TOKENS)  # claims quill's layout: it is not
    with pytest.raises(TokenizerError, match="lists special tokens"):
        tokenizer_from_dict(data)
