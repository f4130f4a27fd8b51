"""GGUF exports run in llama.cpp itself: its own ``llama-simple`` loads each file, and its greedy
text equals ``quill sample --top-k 1`` for 30 tokens, for a char run (the default tokenizer, as
the README's runs/tiny-gelu, with non-ASCII characters and newlines) and BPE runs in both layouts.

llama-simple is built once by ``.ci/build-llama-simple`` (llama.cpp as vendored in the
llama-cpp-python 0.3.36 source distribution) into ~/.cache/quillgpt; QUILL_LLAMA_SIMPLE names
another binary. Without one the tests skip with one line, except where QUILL_REQUIRE_LLAMA_CPP is
set (.ci/run sets it, after building): there a missing binary is a failure.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from quillgpt.cli import main

LLAMA_CPP_VERSION = "0.3.36"  # as pinned in .ci/build-llama-simple
NEW_TOKENS = 30


def llama_simple_path() -> Path | None:
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    built = cache / "quillgpt" / f"llama.cpp-{LLAMA_CPP_VERSION}" / "bin" / "llama-simple"
    for candidate in (os.environ.get("QUILL_LLAMA_SIMPLE"), built, shutil.which("llama-simple")):
        if candidate and os.access(candidate, os.X_OK):
            return Path(candidate)
    return None


@pytest.fixture(scope="module")
def llama_simple() -> Path:
    path = llama_simple_path()
    if path is None:
        if os.environ.get("QUILL_REQUIRE_LLAMA_CPP"):
            pytest.fail("QUILL_REQUIRE_LLAMA_CPP is set but there is no llama-simple: run .ci/build-llama-simple")
        pytest.skip("no llama.cpp llama-simple: build it once with .ci/build-llama-simple (about 5 minutes)")
    return path


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Tiny models train faster on one thread: two spin-wait for each other on a shared CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def text(tmp_path_factory: pytest.TempPathFactory, shakespeare_path: Path) -> Path:
    """Shakespeare with characters of 2 and 3 UTF-8 bytes (é, ’) among the ASCII ones."""
    words = shakespeare_path.read_text(encoding="utf-8")[:20_000]
    path = tmp_path_factory.mktemp("text") / "text.txt"
    path.write_text(words.replace("Citizen", "Citizén").replace("'", "’"), encoding="utf-8")
    return path


# name: (tokenizer, train flags, prompt). Context 48 holds prompt + 30 tokens: quill crops the
# context past block_size and llama.cpp does not (its gpt2 graph has no position past it).
RUNS = {
    "char-gpt2": ("char", ["--activation", "gelu_tanh"], "First Citizén:\nWe’"),
    "bpe-gpt2": ("bpe", ["--activation", "gelu_tanh"], "First Citizén:\nWe"),
    "bpe-llama": ("bpe", ["--position", "rope", "--norm", "rms", "--activation", "swiglu", "--no-head-bias"],
                  "First Citizén:\nWe"),
}


@pytest.mark.parametrize("name", list(RUNS))
def test_llama_cpp_loads_the_gguf_and_writes_quills_greedy_text(
        llama_simple: Path, text: Path, one_thread: None, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        name: str) -> None:
    tokenizer, flags, prompt = RUNS[name]
    data = tmp_path / "data"
    vocab = ["--vocab-size", "400"] if tokenizer == "bpe" else []
    assert main(["prepare", "--text", str(text), "--tokenizer", tokenizer, *vocab, "--out", str(data)]) == 0
    run = tmp_path / "run"
    # Enough steps that greedy picks are decisive (no fp32 near-tie between quill and llama.cpp).
    assert main(["train", "--preset", "tiny", "--block-size", "48", *flags, "--max-iters", "150",
                 "--eval-interval", "150", "--eval-iters", "1", "--sample-chars", "0", "--no-progress",
                 "--dataset", str(data), "--out-dir", str(run)]) == 0
    assert main(["export", str(run), "--format", "gguf", "--out", str(tmp_path / "m.gguf")]) == 0
    capsys.readouterr()
    assert main(["sample", str(run), "--prompt", prompt, "--max-new-tokens", str(NEW_TOKENS), "--top-k", "1"]) == 0
    quill_text = capsys.readouterr().out
    # One thread: llama-simple always starts 4, which on 2 shared cores mostly wait for each other.
    done = subprocess.run([str(llama_simple), "-m", str(tmp_path / "m.gguf"), "-n", str(NEW_TOKENS), prompt],
                          capture_output=True, timeout=120, env={**os.environ, "OMP_THREAD_LIMIT": "1"})
    log = done.stderr.decode(errors="replace")
    assert done.returncode == 0, log[-2000:]
    assert f"decoded {NEW_TOKENS} tokens" in log  # all 30, no early stop at an end token
    # llama-simple prints the prompt's tokens, the new ones and a newline, as `quill sample` does
    assert done.stdout.decode() == quill_text
    assert len(quill_text) > len(prompt) + NEW_TOKENS // 2  # the runs write text, not end tokens
