import gzip
import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quillgpt import sources
from quillgpt.errors import DataError
from quillgpt.sources import read_source_blocks, resolve_text_source, safe_chunks


def _write(path: Path, data: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data if isinstance(data, bytes) else data.encode())
    return path


def read_all(*specs: str) -> str:
    return "".join(read_source_blocks(resolve_text_source(specs)))


def test_a_folder_is_its_txt_files_sorted_recursively(tmp_path: Path) -> None:
    _write(tmp_path / "b.txt", "second\n")
    _write(tmp_path / "a.txt", "first")  # no final newline: one is added between files
    _write(tmp_path / "sub/c.txt.gz", gzip.compress(b"third\n"))
    _write(tmp_path / "notes.md", "not text by suffix\n")
    _write(tmp_path / ".hidden/d.txt", "hidden\n")
    source = resolve_text_source([str(tmp_path)])
    assert [p.relative_to(tmp_path).as_posix() for p in source.files] == ["a.txt", "b.txt", "sub/c.txt.gz"]
    assert read_all(str(tmp_path)) == "first\nsecond\nthird\n"
    assert source.name == tmp_path.name


def test_globs_and_several_paths(tmp_path: Path) -> None:
    for name in ("x1.md", "x2.md", "y.md"):
        _write(tmp_path / name, name + "\n")
    assert read_all(str(tmp_path / "x*.md")) == "x1.md\nx2.md\n"
    assert read_all(str(tmp_path / "y.md"), str(tmp_path / "x*.md"), str(tmp_path / "y.md")) == "y.md\nx1.md\nx2.md\n"


def test_gzip_reads_like_the_plain_file_and_a_bom_is_dropped(tmp_path: Path) -> None:
    text = "\ufeffCaf\u00e9 \u4e2d\u6587 \U0001f600\r\nline two\n" * 50
    plain = _write(tmp_path / "t.txt", text)
    zipped = _write(tmp_path / "t.txt.gz", gzip.compress(text.encode()))
    renamed = _write(tmp_path / "t.data", gzip.compress(text.encode()))  # recognised by content, not name
    assert read_all(str(plain)) == read_all(str(zipped)) == read_all(str(renamed)) == text[1:]
    assert resolve_text_source([str(zipped)]).name == "t"


def test_utf8_error_offsets_are_exact_across_blocks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sources, "READ_BLOCK", 7)  # many blocks; a character split between two
    good = "\u00e9\u4e2d" * 20  # 2- and 3-byte characters
    bad = good.encode() + b"\xff" + b"tail"
    with pytest.raises(DataError, match=rf"not UTF-8 text \(byte 0xff at offset {len(good.encode())}\)"):
        read_all(str(_write(tmp_path / "bad.txt", bad)))
    with pytest.raises(DataError, match=rf"byte 0xff at offset {len(good.encode())} of the decompressed text"):
        read_all(str(_write(tmp_path / "bad.txt.gz", gzip.compress(bad))))
    with pytest.raises(DataError, match=rf"byte 0xe4 at offset {len(good.encode())}"):  # cut inside a character
        read_all(str(_write(tmp_path / "cut.txt", good.encode() + "\u4e2d".encode()[:2])))
    assert read_all(str(_write(tmp_path / "ok.txt", good))) == good


def test_truncated_gzip_is_a_clear_error(tmp_path: Path) -> None:
    data = gzip.compress(("some text\n" * 1000).encode())
    with pytest.raises(DataError, match="not a valid gzip file"):
        read_all(str(_write(tmp_path / "cut.txt.gz", data[: len(data) // 2])))


@pytest.mark.parametrize("spec,match", [
    ("missing.txt", "text file not found: .*missing.txt"),
    ("empty_dir", "is a directory with no .txt or .txt.gz files"),
    ("nothing/*.txt", "no files match"),
])
def test_bad_specs(tmp_path: Path, spec: str, match: str) -> None:
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(DataError, match=match):
        resolve_text_source([str(tmp_path / spec)])


def _random_text(seed: int, n: int) -> str:
    rng = random.Random(seed)
    pieces = ["word", " ", "\n", "\n\n", "  ", "caf\u00e9", "!", "\t", "x\n", " \n", "\u4e2d", "\u00e9\n"]
    return "".join(rng.choice(pieces) for _ in range(n))


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), size=st.integers(60, 200), block=st.integers(1, 50))
def test_safe_chunks_keep_the_text_and_cut_only_at_safe_places(seed: int, size: int, block: int) -> None:
    text = _random_text(seed, 400)
    blocks = [text[i:i + block] for i in range(0, len(text), block)]
    chunks = list(safe_chunks(blocks, chunk_chars=size))
    assert "".join(chunks) == text
    assert all(chunks)
    for left, right in zip(chunks, chunks[1:], strict=False):
        # Before a newline that follows a visible character: where GPT-2's pre-tokenizer always splits.
        assert right[0] == "\n" and left[-1].isascii() and not left[-1].isspace(), (left[-3:], right[:3])


def test_text_without_newlines_is_cut_before_spaces() -> None:
    text = "word " * 10_000
    chunks = list(safe_chunks([text], chunk_chars=100))
    assert "".join(chunks) == text and max(map(len, chunks)) <= 8 * 100 and len(chunks) > 50
    assert all(c.startswith(" ") for c in chunks[1:])
