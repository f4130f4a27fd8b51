"""Models that leave quillgpt, and models that come in (``quill export``, ``quill import``).

- ``hf``: a run directory -> a Hugging Face ``transformers`` folder (GPT-2 or Llama layout),
  with a fast tokenizer, a chat template for SFT runs and a model card (``card``).
- ``importer``: a local GPT-2-family folder -> a quill run directory.
- ``gguf``: a run directory -> one GGUF file for llama.cpp and Ollama.

transformers and gguf are heavy, so they are an extra (``pip install quillgpt[export]``) and
are imported only inside the functions that need them (``require``).
"""

from __future__ import annotations

import importlib
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

from quillgpt.errors import ConfigError, QuillError

EXTRA_HINT = "pip install quillgpt[export]"


class ExtraMissingError(QuillError):
    """An optional package of the export extra is not installed."""


def require(module: str) -> ModuleType:
    """Import ``module`` (transformers, gguf) or fail with one line naming the extra."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ExtraMissingError(f"{module} is not installed: quill export/import need the export extra, "
                           f"{EXTRA_HINT}") from None


def check_out_dir(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"--out {out} already exists and is not empty: choose a new folder or remove it")


@contextmanager
def staged_dir(out: Path) -> Iterator[Path]:
    """A temp folder next to ``out`` to write into; renamed to ``out`` only if the block succeeds.

    So a failure (bad input found half-way, a full disk, Ctrl-C) never leaves a half-written
    ``out`` behind: it leaves nothing.
    """
    out = Path(out)
    check_out_dir(out)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    with unwritable_is_one_line(out):
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    try:
        with unwritable_is_one_line(out):
            yield tmp
            check_out_dir(out)  # someone may have created it meanwhile
            if out.exists():
                out.rmdir()  # empty (checked): rename needs it gone
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextmanager
def unwritable_is_one_line(out: Path) -> Iterator[None]:
    """A folder that cannot be made or written (no such parent, no permission, a full disk) is one line."""
    try:
        yield
    except OSError as exc:
        raise ConfigError(f"cannot write --out {out}: {exc.strerror or exc}: choose a place you can write to, "
                          "with room to spare") from None


def staged_file(out: Path) -> Path:
    """The temp path next to a single output file (GGUF); the caller renames it."""
    out = Path(out)
    if out.exists():
        raise ConfigError(f"--out {out} already exists: choose a new file name or remove it")
    with unwritable_is_one_line(out):
        out.parent.mkdir(parents=True, exist_ok=True)
    return out.parent / f".{out.name}.tmp-{os.getpid()}"
