"""Shared fixtures: small generated text, prepared datasets, and the Tiny Shakespeare file."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from quillgpt.corpora import find_corpus
from quillgpt.data import prepare_text

WORDS = ("the king shall speak to thee and thou art my lord good night sweet prince "
         "what light through yonder window breaks").split()


def make_text(n_words: int = 4000, seed: int = 0) -> str:
    rng = random.Random(seed)
    lines = []
    for _ in range(n_words // 8):
        lines.append(" ".join(rng.choice(WORDS) for _ in range(8)).capitalize() + ".")
    return "\n".join(lines) + "\n"


@pytest.fixture
def small_text() -> str:
    return make_text()


@pytest.fixture
def text_file(tmp_path: Path, small_text: str) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_text(small_text)
    return path


@pytest.fixture
def dataset_dir(tmp_path: Path, small_text: str) -> Path:
    return prepare_text(small_text, tmp_path / "dataset", {"name": "generated", "sha256": "0" * 64})


@pytest.fixture(scope="session")
def shakespeare_path() -> Path:
    # Found through QUILL_DATA_DIR, the user cache or ../shared/data (or downloaded).
    return find_corpus("shakespeare")
