import gzip
from pathlib import Path

import pytest

from quillgpt.corpora import CORPORA, find_corpus, read_text
from quillgpt.errors import DataError
from quillgpt.fsutil import sha256_file


def _write(path: Path, content: bytes) -> Path:
    path.write_bytes(content)
    return path


def test_named_corpus_with_wrong_sha_is_refused(tmp_path: Path) -> None:
    fake = tmp_path / "input.txt"
    fake.write_text("not shakespeare")
    with pytest.raises(DataError, match="sha256"):
        find_corpus("shakespeare", data_path=str(fake))


def test_unknown_corpus(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="unknown corpus 'nope'"):
        find_corpus("nope")


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


def test_english_novels_is_registered_with_its_sha256(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    corpus = CORPORA["english-novels"]
    assert corpus.filename == "novels95.txt.gz" and corpus.subdir == "english_novels"
    try:
        found = find_corpus("english-novels", download=False)
    except DataError as exc:  # only its absence is tolerated (the lookup itself is tested below): a file
        assert "not found" in str(exc) and "sha256" not in str(exc), exc  # with the wrong sha256 fails here
        found = None
    if found is not None:
        assert found.name == "novels95.txt.gz" and sha256_file(found) in corpus.accepted_sha256
    import quillgpt.corpora as corpora

    monkeypatch.setenv("QUILL_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(corpora, "_shared_data_dirs", lambda: [])
    with pytest.raises(DataError, match=r"cannot be downloaded: put novels95.txt.gz .*english_novels/"):
        find_corpus("english-novels")
    fake = tmp_path / "english_novels" / "novels95.txt.gz"
    fake.parent.mkdir()
    fake.write_bytes(gzip.compress(b"not the novels\n"))
    with pytest.raises(DataError, match="not the expected a7abe46a29cf"):
        find_corpus("english-novels")
