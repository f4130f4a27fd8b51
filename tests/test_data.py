import gzip
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from quillgpt.data import (
    Batches,
    TokenDataset,
    TokenizerChoice,
    load_tokenizer,
    prepare_file,
    prepare_source,
    prepare_text,
    resolve_dataset,
    token_dtype,
)
from quillgpt.errors import DataError, TokenizerError
from quillgpt.tokenizers import CharTokenizer


def test_shakespeare_prepares_to_65_characters(tmp_path: Path, shakespeare_path: Path) -> None:
    folder = prepare_file(shakespeare_path, tmp_path / "shakespeare", name="shakespeare")
    ds = TokenDataset(folder)
    assert ds.tokenizer.vocab_size == 65
    assert "".join(ds.tokenizer.chars) == "\n !$&',-.3:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
    n = 1_115_394
    assert len(ds.splits["train"]) == int(0.9 * n)
    assert len(ds.splits["train"]) + len(ds.splits["val"]) == n
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["source"]["sha256"] == "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
    # The first train tokens decode to the start of the play, the val split continues the text.
    text = shakespeare_path.read_text()
    assert ds.tokenizer.decode(ds.splits["train"][:14].tolist()) == text[:14]
    assert ds.tokenizer.decode(ds.splits["val"][:20].tolist()) == text[int(0.9 * n):int(0.9 * n) + 20]


def test_batches_shapes_and_shift() -> None:
    data = np.arange(1000, dtype=np.uint16)  # every window is identifiable by its first token
    x, y = Batches(data, batch_size=4, block_size=8, seed=0).next()
    assert x.shape == y.shape == (4, 8)
    assert x.dtype == y.dtype == torch.long
    offsets = torch.arange(8)
    for row in range(4):  # each row is a real window of the data, y one token ahead
        assert torch.equal(x[row], x[row, 0] + offsets)
        assert torch.equal(y[row], x[row] + 1)
    starts = torch.cat([Batches(data, 64, 8, seed=s).next()[0][:, 0] for s in range(20)])
    assert starts.min() >= 0 and starts.max() <= 1000 - 9  # the last window ends at the last token
    assert len(set(starts.tolist())) > 500  # offsets are spread over the data


def test_batches_are_reproducible_and_resumable(dataset_dir: Path) -> None:
    data = TokenDataset(dataset_dir).splits["train"]
    a, b = Batches(data, 3, 5, seed=7), Batches(data, 3, 5, seed=7)
    assert all(torch.equal(a.next()[0], b.next()[0]) for _ in range(3))
    saved = a.state_dict()
    expected = [a.next()[0] for _ in range(3)]
    c = Batches(data, 3, 5, seed=999)
    c.load_state_dict(json.loads(json.dumps(saved)))
    assert all(torch.equal(c.next()[0], e) for e in expected)
    assert not torch.equal(Batches(data, 3, 5, seed=8).next()[0], Batches(data, 3, 5, seed=7).next()[0])


def test_block_size_larger_than_data(tmp_path: Path) -> None:
    folder = resolve_dataset(str(_write(tmp_path / "short.txt", "abcdefghij" * 3)))
    ds = TokenDataset(folder)
    with pytest.raises(DataError, match="too few for block_size 64"):
        ds.check_block_size(64)


def _write(path: Path, text: str | bytes) -> Path:
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


def test_resolve_dataset_reuses_a_prepared_text(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    path = _write(tmp_path / "mine.txt", "hello there, general kenobi\n" * 20)
    folder = resolve_dataset(str(path))
    assert folder == Path("data/mine")
    stamp = (folder / "train.bin").stat().st_mtime_ns
    assert resolve_dataset(str(path)) == folder
    assert (folder / "train.bin").stat().st_mtime_ns == stamp  # not prepared twice
    _write(path, "different text now\n" * 20)  # the file changed: prepared again
    assert TokenDataset(resolve_dataset(str(path))).tokenizer.chars == sorted(set("different text now\n"))


# ---------------------------------------------------------------------------------------
# Any text at any size: BPE, streaming, gzip, folders, uint32
# ---------------------------------------------------------------------------------------

BPE_512 = TokenizerChoice("bpe", 512)


def _tokens(folder: Path) -> tuple[list[int], list[int]]:
    ds = TokenDataset(folder)
    return ds.splits["train"].tolist(), ds.splits["val"].tolist()


def test_streaming_prepare_gives_the_tokens_of_one_shot_encoding(tmp_path: Path, shakespeare_path: Path) -> None:
    text = shakespeare_path.read_text()[:60_000] + "caf\u00e9 \u4e2d\u6587 \U0001f600\n" * 20
    streamed = prepare_text(text, tmp_path / "streamed", {"sha256": "x"}, BPE_512, chunk_chars=500)
    ds = TokenDataset(streamed)
    cut = int(0.9 * len(text))
    # Encoding the whole train text and the whole val text in one call each gives the same ids.
    assert ds.splits["train"].tolist() == ds.tokenizer.encode(text[:cut])
    assert ds.splits["val"].tolist() == ds.tokenizer.encode(text[cut:])
    assert ds.tokenizer.decode(ds.splits["val"].tolist()) == text[cut:]
    split = ds.meta["split"]
    assert (split["train_chars"], split["val_chars"]) == (cut, len(text) - cut)
    assert split["val_bytes"] == len(text[cut:].encode())
    chars = TokenDataset(prepare_text(text, tmp_path / "chunky", {"sha256": "x"}, chunk_chars=100))
    assert chars.splits["train"].tolist() == chars.tokenizer.encode(text[:cut])
    assert chars.splits["val"].tolist() == chars.tokenizer.encode(text[cut:])


def test_every_tokenizer_gets_the_same_val_text(tmp_path: Path, shakespeare_path: Path) -> None:
    char = TokenDataset(prepare_file(shakespeare_path, tmp_path / "char"))
    bpe = TokenDataset(prepare_file(shakespeare_path, tmp_path / "bpe", tokenizer=BPE_512))
    assert char.tokenizer.decode(char.splits["val"].tolist()) == bpe.tokenizer.decode(bpe.splits["val"].tolist())
    assert char.meta["split"]["val_chars"] == bpe.meta["split"]["val_chars"] == 111_540
    assert bpe.meta["split"]["val_tokens"] < 111_540 / 1.8  # ~2 characters per token at vocab 512
    assert bpe.dtype == np.uint16
    assert bpe.bits_per_char(1.0) == pytest.approx(bpe.meta["split"]["val_tokens"] / 111_540 / np.log(2))


def test_token_dtype_widens_past_65536() -> None:
    assert token_dtype(65) == token_dtype(65_536) == np.uint16
    assert token_dtype(65_537) == token_dtype(200_000) == np.uint32


def test_uint32_datasets_write_and_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import quillgpt.data as data

    monkeypatch.setattr(data, "token_dtype", lambda vocab_size: np.dtype(np.uint32))
    folder = prepare_text("hello there, general kenobi\n" * 50, tmp_path / "wide", {"sha256": "x"})
    ds = TokenDataset(folder)
    assert ds.meta["dtype"] == "uint32" and ds.splits["train"].dtype == np.uint32
    assert (folder / "train.bin").stat().st_size == 4 * len(ds.splits["train"])
    assert ds.tokenizer.decode(ds.splits["train"][:5].tolist()) == "hello"
    x, y = Batches(ds.splits["train"], 2, 8, seed=0).next()
    assert x.dtype == torch.long and torch.equal(x[:, 1:], y[:, :-1])


def test_folder_glob_and_gzip_prepare_like_the_plain_text(tmp_path: Path, small_text: str) -> None:
    half = small_text.index("\n", len(small_text) // 2) + 1
    (tmp_path / "books").mkdir()
    (tmp_path / "books/1.txt").write_text(small_text[:half])
    (tmp_path / "books/2.txt.gz").write_bytes(gzip.compress(small_text[half:].encode()))
    plain = _tokens(prepare_text(small_text, tmp_path / "plain", {"sha256": "x"}))
    from quillgpt.sources import resolve_text_source

    folder = prepare_source(resolve_text_source([str(tmp_path / "books")]), tmp_path / "from_dir")
    globbed = prepare_source(resolve_text_source([str(tmp_path / "books/*")]), tmp_path / "from_glob")
    assert _tokens(folder) == _tokens(globbed) == plain  # the first part ends with "\n": nothing added
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["source"]["files"] == 2 and meta["source"]["name"] == "books"
    (tmp_path / "one.txt.gz").write_bytes(gzip.compress(small_text.encode()))
    assert _tokens(prepare_file(tmp_path / "one.txt.gz", tmp_path / "gz")) == plain


def test_reusing_a_tokenizer(tmp_path: Path, small_text: str) -> None:
    first = prepare_text(small_text, tmp_path / "first", {"sha256": "x"}, BPE_512)
    tok = load_tokenizer(first)
    assert load_tokenizer(first / "meta.json") == tok
    reused = prepare_text("Thou art the king.\n" * 30, tmp_path / "second", {"sha256": "y"},
                          TokenizerChoice("bpe", existing=tok, existing_from=str(first)))
    assert TokenDataset(reused).tokenizer == tok
    char = CharTokenizer.from_text("abc ")
    with pytest.raises(TokenizerError, match="2 character.*outside the character vocabulary of here.*'d', 'e'"):
        prepare_text("abcde", tmp_path / "third", {}, TokenizerChoice("char", existing=char, existing_from="here"))
    assert not (tmp_path / "third").exists()  # refused before anything was written
    with pytest.raises(DataError, match="no tokenizer found"):
        load_tokenizer(tmp_path)
