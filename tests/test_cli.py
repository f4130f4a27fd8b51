"""The CLI end to end, in subprocesses, as a user runs it."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


def quill(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-m", "quillgpt", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env=env)


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_prepare_train_sample_info(tmp_path: Path, text_file: Path) -> None:
    prep = quill("prepare", "--text", str(text_file), "--out", "data/mine", cwd=tmp_path)
    assert prep.returncode == 0, prep.stderr
    assert "prepared data/mine" in prep.stdout
    train = quill("train", "--preset", "tiny", "--dataset", "data/mine", "--out-dir", "runs/t", "--max-iters", "30",
                  "--n-embd", "24", "--no-progress", cwd=tmp_path)
    assert train.returncode == 0, train.stderr
    assert "done: 30 steps" in train.stdout and "--- sample (100 tokens) ---" in train.stdout
    run = tmp_path / "runs/t"
    assert json.loads((run / "config.json").read_text())["model"]["n_embd"] == 24
    assert (run / "loss.png").is_file()

    sample = quill("sample", "runs/t", "--prompt", "The king", "--max-new-tokens", "40", "--temperature", "0.8",
                   "--top-k", "5", "--top-p", "0.95", "--seed", "1", cwd=tmp_path)
    assert sample.returncode == 0, sample.stderr
    text = sample.stdout.rstrip("\n")
    assert text.startswith("The king") and len(text) == len("The king") + 40
    again = quill("sample", "runs/t", "--prompt", "The king", "--max-new-tokens", "40", "--temperature", "0.8",
                  "--top-k", "5", "--top-p", "0.95", "--seed", "1", cwd=tmp_path)
    assert again.stdout == sample.stdout  # seeded: reproducible

    info = quill("info", "runs/t", cwd=tmp_path)
    assert info.returncode == 0, info.stderr
    assert "parameters:" in info.stdout and "step 30" in info.stdout and "n_embd=24" in info.stdout

    # The same out-dir is never silently overwritten.
    clash = quill("train", "--preset", "tiny", "--dataset", "data/mine", "--out-dir", "runs/t", cwd=tmp_path)
    assert_one_line_error(clash, "already holds a run", "--resume runs/t")


def test_default_run_dirs_never_clobber(tmp_path: Path, text_file: Path) -> None:
    for expected in ("runs/tiny", "runs/tiny-2"):
        result = quill("train", "--preset", "tiny", "--dataset", str(text_file), "--max-iters", "2",
                       "--eval-interval", "1", "--sample-chars", "0", "--no-progress", cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert f"run dir {expected}" in result.stdout


def test_prepare_shakespeare_by_name(tmp_path: Path, shakespeare_path: Path) -> None:
    result = quill("prepare", "shakespeare", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "vocab 65" in result.stdout and "1,003,854 train / 111,540 val" in result.stdout


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    (tmp_path / "empty.txt").write_bytes(b"")
    (tmp_path / "latin1.txt").write_bytes("caf\u00e9".encode("latin-1") * 50)
    (tmp_path / "images").mkdir()
    return {"empty": tmp_path / "empty.txt", "latin1": tmp_path / "latin1.txt"}


@pytest.mark.parametrize("args,fragments", [
    (["prepare", "--text", "missing.txt"], ["not found: missing.txt"]),
    (["prepare", "--text", "empty.txt"], ["empty.txt is empty"]),
    (["prepare", "--text", "latin1.txt"], ["not UTF-8", "iconv"]),
    (["prepare", "--text", "images"], ["images is a directory with no .txt"]),
    (["prepare", "--text", "."], ["latin1.txt is not UTF-8"]),  # a folder is read file by file
    (["train", "--preset", "huge"], ["unknown preset 'huge'", "cpu-small"]),
    (["train", "--preset", "tiny", "--n-embd", "100", "--n-head", "6"],
     ["n_embd (100) must be divisible by n_head (6)"]),
    (["train", "--preset", "tiny", "--lr", "abc"], ["--lr expects float, got 'abc'"]),
    (["train", "--preset", "tiny", "--dataset", "nowhere"], ["dataset 'nowhere' not found"]),
    (["train", "--bogus-flag", "1"], ["unrecognized arguments: --bogus-flag"]),
    (["sample", "no_such_run"], ["run directory not found: no_such_run"]),
])
def test_bad_input_gives_one_line_and_exit_2(tmp_path: Path, files: dict, args: list[str],
                                             fragments: list[str]) -> None:
    assert_one_line_error(quill(*args, cwd=tmp_path), *fragments)


def test_prompt_with_unknown_character_names_it(tmp_path: Path, text_file: Path) -> None:
    train = quill("train", "--preset", "tiny", "--dataset", str(text_file), "--out-dir", "r", "--max-iters", "2",
                  "--eval-interval", "1", "--sample-chars", "0", "--no-progress", cwd=tmp_path)
    assert train.returncode == 0, train.stderr
    result = quill("sample", "r", "--prompt", "Zebra \u00e9", cwd=tmp_path)
    assert_one_line_error(result, "'Z'", "not in the vocabulary")
    assert result.stdout == ""  # nothing printed before the error
    assert_one_line_error(quill("sample", "r", "--temperature", "0", cwd=tmp_path), "temperature must be > 0")


def test_bpe_prepare_train_sample_eval(tmp_path: Path, small_text: str) -> None:
    (tmp_path / "books").mkdir()
    (tmp_path / "books/a.txt").write_text(small_text)
    prep = quill("prepare", "--text", "books", "--tokenizer", "bpe", "--vocab-size", "300", cwd=tmp_path)
    assert prep.returncode == 0, prep.stderr
    assert "prepared data/books-bpe300: bpe vocab" in prep.stdout
    train = quill("train", "--preset", "tiny", "--dataset", "data/books-bpe300", "--out-dir", "r", "--max-iters", "10",
                  "--eval-interval", "5", "--sample-chars", "0", "--no-progress", cwd=tmp_path)
    assert train.returncode == 0, train.stderr
    assert "bits/char" in train.stdout
    # A prompt in characters the corpus never had still encodes (as bytes).
    prompt = "Zo\u00eb \u4e2d\u6587 \U0001f600"
    sample = quill("sample", "r", "--prompt", prompt, "--max-new-tokens", "20", "--seed", "1", cwd=tmp_path)
    assert sample.returncode == 0, sample.stderr
    assert sample.stdout.startswith(prompt)
    evaluated = quill("eval", "r", "--json", cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr
    result = json.loads(evaluated.stdout)
    assert result["bits_per_char"] == pytest.approx(result["nats"] / result["chars"] / 0.6931471805599453)
    assert result["chars"] > 1.5 * result["tokens"]  # BPE tokens span several characters
