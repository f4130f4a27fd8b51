import json
from pathlib import Path

import numpy as np
import pytest
import torch

from quillgpt.data import Batches, TokenDataset, find_corpus, prepare_file, read_text, resolve_dataset
from quillgpt.errors import DataError


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


def test_named_corpus_with_wrong_sha_is_refused(tmp_path: Path) -> None:
    fake = tmp_path / "input.txt"
    fake.write_text("not shakespeare")
    with pytest.raises(DataError, match="sha256"):
        find_corpus("shakespeare", data_path=str(fake))


def test_unknown_corpus(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="unknown corpus 'nope'"):
        find_corpus("nope")


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


@pytest.mark.parametrize("content,match", [
    (b"", "is empty"),
    (b"  \n\n", "is empty"),
    (b"caf\xe9 au lait", "not UTF-8 text.*0xe9 at offset 3"),
    (b"ab\x00cd", "binary"),
])
def test_read_text_errors(tmp_path: Path, content: bytes, match: str) -> None:
    with pytest.raises(DataError, match=match):
        read_text(_write(tmp_path / "f.txt", content))


def test_read_text_missing_and_directory(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        read_text(tmp_path / "missing.txt")
    with pytest.raises(DataError, match="is a directory"):
        read_text(tmp_path)


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
